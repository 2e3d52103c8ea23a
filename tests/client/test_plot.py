"""glai_client.plot: a realistic curves body becomes a valid PNG with one panel per dashboard chart."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from glai_client.plot import build_panels, group_curves, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPARSITIES = [0.25, 0.5, 0.7, 0.8, 0.9]


def _series(key: str, phase: str, values: list[float], seconds_per_step: float) -> dict:
    return {"key": key, "phase": phase, "points": [
        {"step": i, "value": v, "wall_time": (i + 1) * seconds_per_step} for i, v in enumerate(values)]}


def _decay(start: float, end: float, n: int, rate: float) -> list[float]:
    return [end + (start - end) * math.exp(-rate * i) for i in range(n)]


def realistic_curves() -> dict:
    return {"series": [
        _series("train_loss", "structural", _decay(2.2, 0.3, 24, 0.18), 0.8),
        _series("val_loss", "structural", _decay(2.2, 0.4, 24, 0.16), 0.8),
        _series("val_accuracy", "structural", _decay(0.2, 0.88, 24, 0.2), 0.8),
        _series("unit_distance", "structural", _decay(0.6, 0.004, 24, 0.25), 0.8),
        _series("path_distance", "structural", _decay(0.9, 0.01, 24, 0.22), 0.8),
        _series("train_loss", "quantitative", _decay(0.35, 0.12, 30, 0.15), 0.5),
        _series("val_loss", "quantitative", _decay(0.4, 0.22, 30, 0.14), 0.5),
        _series("val_accuracy", "quantitative", _decay(0.87, 0.945, 30, 0.15), 0.5),
        _series("sparsity", "pruning", SPARSITIES, 2.0),
        _series("pruned_accuracy", "pruning", [0.944, 0.941, 0.93, 0.912, 0.86], 2.0),
        _series("train_loss", "baseline", _decay(2.3, 0.15, 60, 0.07), 1.1),
        _series("val_loss", "baseline", _decay(2.3, 0.26, 60, 0.065), 1.1),
        _series("val_accuracy", "baseline", _decay(0.15, 0.935, 60, 0.07), 1.1),
    ]}


SUMMARY = {"glai_accuracy": 0.9447, "baseline_accuracy": 0.9351, "target_accuracy": 0.9,
           "glai_time_to_target_s": 21.7, "baseline_time_to_target_s": 44.0, "speedup": 2.03}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND" or b"IEND" in data[-12:]
    return width, height


def test_plot_curves_writes_a_png_grid(tmp_path: Path) -> None:
    out = plot_curves(realistic_curves(), tmp_path / "plots" / "job.png", summary=SUMMARY,
                      title="Job 3b7a8670")
    assert out == tmp_path / "plots" / "job.png"
    width, height = png_size(out)
    # 9 panels in 3 columns at 5.2 x 3.6 inches, 110 dpi.
    assert (width, height) == (round(3 * 5.2 * 110), round(3 * 3.6 * 110))
    assert out.stat().st_size > 60_000  # nine panels of lines and text, not a blank canvas


def test_panels_follow_the_dashboard() -> None:
    panels = build_panels(group_curves(realistic_curves()), SUMMARY)
    titles = [p.title for p in panels]
    assert titles == [
        "Time to accuracy: GLAI vs MLP baseline", "Accuracy vs sparsity",
        "Structural · loss", "Structural · accuracy", "Structural · distances",
        "Quantitative (GLAI) · loss", "Quantitative (GLAI) · accuracy",
        "Baseline (MLP) · loss", "Baseline (MLP) · accuracy",
    ]
    tta = panels[0]
    glai, baseline = tta.lines
    assert len(glai.x) == 24 + 30 and glai.x == sorted(glai.x)  # quantitative continues structural's clock
    assert glai.x[24] == pytest.approx(24 * 0.8 + 0.5)
    assert len(baseline.x) == 60
    assert tta.hlines[0][0] == 0.9 and len(tta.vlines) == 2
    sparsity = panels[1].lines[0]
    assert sparsity.x == SPARSITIES and sparsity.y[-1] == 0.86
    distances = panels[4]
    assert distances.vlines[0][0] == 23  # the stop point: the structural phase's last step


def test_plot_copes_with_partial_and_empty_curves(tmp_path: Path) -> None:
    running = {"series": [_series("train_loss", "structural", [2.0], 0.8),
                          _series("val_accuracy", "structural", [0.3], 0.8)]}
    assert png_size(plot_curves(running, tmp_path / "running.png"))[0] > 0
    assert png_size(plot_curves({"series": []}, tmp_path / "empty.png"))[0] > 0
    # No pruning curves yet, but the summary has them: the sparsity panel comes from the summary.
    panels = build_panels(group_curves({"series": []}), {"pruned": {"0.5": 0.9, "0.8": 0.85}})
    assert [p.title for p in panels] == ["Accuracy vs sparsity"]
    assert panels[0].lines[0].x == [0.5, 0.8]
