"""Plot a job's curves to a PNG, panel for panel like the dashboard's job page.

``plot_curves(curves_json, path)`` takes the body of ``GET /v1/jobs/{id}/curves`` (optionally the job's
``summary`` for the target line, the time-to-target marks and the unpruned accuracy) and writes one PNG
with a grid of panels: time to accuracy (GLAI vs MLP baseline, with the target line), accuracy vs sparsity,
then loss and accuracy for each training phase and the structural distances with the stop point marked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: must come before pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: E402

# Okabe-Ito, as on the dashboard.
BLUE, ORANGE, GREEN, PURPLE, YELLOW, GREY = "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#777777"
TRAINING_PHASES = ("structural", "quantitative", "baseline")
PHASE_TITLES = {"structural": "Structural", "quantitative": "Quantitative (GLAI)",
                "baseline": "Baseline (MLP)"}
KNOWN = {"train_loss", "val_loss", "val_accuracy", "train_accuracy", "unit_distance", "path_distance"}

Points = list[tuple[float, float, float]]  # (step, value, wall_time)


@dataclass
class Line:
    label: str
    x: list[float]
    y: list[float]
    color: str
    dashed: bool = False
    markers: bool = False


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    percent_y: bool = False
    percent_x: bool = False
    seconds_x: bool = False
    hlines: list[tuple[float, str, str]] = field(default_factory=list)  # (y, label, color)
    vlines: list[tuple[float, str, str]] = field(default_factory=list)  # (x, label, color)
    points: list[tuple[float, float, str]] = field(default_factory=list)  # (x, y, color)


def group_curves(curves_json: Mapping[str, Any]) -> dict[str, dict[str, Points]]:
    """``{"series": [{key, phase, points}]}`` -> ``{phase: {key: [(step, value, wall_time), ...]}}``."""
    grouped: dict[str, dict[str, Points]] = {}
    for series in curves_json.get("series", []):
        points = [(float(p["step"]), float(p["value"]), float(p.get("wall_time") or 0.0))
                  for p in series.get("points", []) if _finite(p.get("value"))]
        points.sort()
        grouped.setdefault(series["phase"], {})[series["key"]] = points
    return grouped


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _xy(points: Points, x: int = 0) -> tuple[list[float], list[float]]:
    return [p[x] for p in points], [p[1] for p in points]


def _line(label: str, points: Points, color: str, dashed: bool = False) -> Line:
    xs, ys = _xy(points)
    return Line(label, xs, ys, color, dashed)


def build_panels(grouped: dict[str, dict[str, Points]],
                 summary: Mapping[str, Any] | None = None) -> list[Panel]:
    """The panels, in the dashboard's order, for whatever curves exist so far."""
    summary = summary or {}
    panels: list[Panel] = []

    # Time to accuracy: GLAI's clock runs through structural, then quantitative (offset by structural's end).
    structural = grouped.get("structural", {})
    offset = max((p[2] for pts in structural.values() for p in pts), default=0.0)
    glai = [(p[2], p[1]) for p in structural.get("val_accuracy", [])]
    glai += [(p[2] + offset, p[1]) for p in grouped.get("quantitative", {}).get("val_accuracy", [])]
    baseline = [(p[2], p[1]) for p in grouped.get("baseline", {}).get("val_accuracy", [])]
    if glai or baseline:
        panel = Panel("Time to accuracy: GLAI vs MLP baseline", "wall time", "validation accuracy", [],
                      percent_y=True, seconds_x=True)
        if glai:
            panel.lines.append(Line("GLAI (structural → quantitative)", [p[0] for p in glai],
                                    [p[1] for p in glai], BLUE))
        if baseline:
            panel.lines.append(Line("MLP baseline", [p[0] for p in baseline], [p[1] for p in baseline],
                                    ORANGE, dashed=True))
        target = summary.get("target_accuracy")
        if _finite(target):
            panel.hlines.append((target, f"target {target:.1%}", "#B91C1C"))
            marks = (("glai_time_to_target_s", "GLAI", BLUE), ("baseline_time_to_target_s", "MLP", ORANGE))
            for key, who, color in marks:
                if _finite(summary.get(key)):
                    panel.vlines.append((summary[key], f"{who} at target: {_seconds(summary[key])}", color))
                    panel.points.append((summary[key], target, color))
        panels.append(panel)

    # Accuracy vs sparsity: pruned_accuracy's step indexes the sparsity series.
    pruning = grouped.get("pruning", {})
    level = {p[0]: p[1] for p in pruning.get("sparsity", [])}
    sparse = sorted((level[p[0]], p[1]) for p in pruning.get("pruned_accuracy", []) if p[0] in level)
    if not sparse and isinstance(summary.get("pruned"), Mapping):
        sparse = sorted((float(s), float(a)) for s, a in summary["pruned"].items() if _finite(a))
    if sparse:
        xs, ys = map(list, zip(*sparse, strict=True))
        panel = Panel("Accuracy vs sparsity", "sparsity", "accuracy",
                      [Line("pruned GLAI", xs, ys, BLUE, markers=True)], percent_y=True, percent_x=True)
        references = (("glai_accuracy", "unpruned GLAI", GREY), ("baseline_accuracy", "MLP baseline", ORANGE))
        for key, label, color in references:
            if _finite(summary.get(key)):
                panel.hlines.append((summary[key], f"{label} {summary[key]:.1%}", color))
        panels.append(panel)

    others = [p for p in grouped if p not in TRAINING_PHASES and p != "pruning"]
    for phase in (*TRAINING_PHASES, *others):
        series = grouped.get(phase)
        if not series:
            continue
        name = PHASE_TITLES.get(phase, phase)
        if "train_loss" in series or "val_loss" in series:
            lines = [_line("train", series["train_loss"], BLUE)] if "train_loss" in series else []
            if "val_loss" in series:
                lines.append(_line("validation", series["val_loss"], ORANGE, dashed=True))
            panels.append(Panel(f"{name} · loss", "epoch", "loss", lines))
        if "val_accuracy" in series or "train_accuracy" in series:
            lines = [_line("train", series["train_accuracy"], BLUE)] if "train_accuracy" in series else []
            if "val_accuracy" in series:
                lines.append(_line("validation", series["val_accuracy"], ORANGE))
            panels.append(Panel(f"{name} · accuracy", "epoch", "accuracy", lines, percent_y=True))
        if "unit_distance" in series or "path_distance" in series:
            lines = [_line("unit distance", series["unit_distance"], BLUE)] if "unit_distance" in series \
                else []
            if "path_distance" in series:
                lines.append(_line("path distance", series["path_distance"], ORANGE, dashed=True))
            stop = max(p[0] for pts in series.values() for p in pts)
            panels.append(Panel(f"{name} · distances", "epoch", "distance", lines,
                                vlines=[(stop, f"stopped at epoch {stop:g}", YELLOW)]))
        extra = sorted(k for k in series if k not in KNOWN)
        if extra:
            colors = (GREEN, PURPLE, YELLOW, BLUE, ORANGE, GREY)
            panels.append(Panel(f"{name} · other metrics", "step", "value",
                                [_line(k, series[k], colors[i % len(colors)]) for i, k in enumerate(extra)]))
    return panels


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes}m {secs:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _draw(ax: Axes, panel: Panel) -> None:
    for line in panel.lines:
        ax.plot(line.x, line.y, color=line.color, linestyle="--" if line.dashed else "-", linewidth=1.8,
                marker="o" if line.markers or len(line.x) == 1 else None, markersize=4, label=line.label)
    for y, label, color in panel.hlines:
        ax.axhline(y, color=color, linestyle=":", linewidth=1.2, label=label)
    for x, label, color in panel.vlines:
        ax.axvline(x, color=color, linestyle="-.", linewidth=1.2, label=label)
    for x, y, color in panel.points:
        ax.plot([x], [y], marker="o", markersize=7, markerfacecolor="white", markeredgecolor=color,
                markeredgewidth=2, linestyle="none")
    ax.set_title(panel.title, loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.percent_y:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if panel.percent_x:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if panel.seconds_x:
        fmt: Callable[[float, Any], str] = lambda v, _pos: _seconds(v) if v > 0 else "0"  # noqa: E731
        ax.xaxis.set_major_formatter(FuncFormatter(fmt))
    ax.grid(True, color="#E5E9EE", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="best")


def plot_curves(curves_json: Mapping[str, Any], path: str | Path, summary: Mapping[str, Any] | None = None,
                title: str | None = None, columns: int = 3) -> Path:
    """Write the curves of one job as a PNG grid to ``path`` and return the path.

    ``curves_json`` is the body of ``GET /v1/jobs/{id}/curves``; ``summary`` (the job's ``summary``) adds
    the target line, the time-to-target marks and the unpruned/baseline accuracy on the sparsity panel.
    """
    path = Path(path)
    panels = build_panels(group_curves(curves_json), summary)
    columns = max(1, min(columns, len(panels) or 1))
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    try:
        flat = axes.ravel()
        for ax, panel in zip(flat, panels, strict=False):
            _draw(ax, panel)
        for ax in flat[len(panels):]:
            ax.axis("off")
        if not panels:
            flat[0].text(0.5, 0.5, "No curves recorded", ha="center", va="center", fontsize=12, color=GREY)
        if title:
            fig.suptitle(title, fontsize=13, fontweight="bold")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
