"""`glai` on bad local input: one line naming the problem and exit status 2, never a traceback; and
`glai predict` on tables with and without a header row (a real exported model, no server needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from glai_client.cli import app
from glai_core.artifacts import save_model
from glai_core.model import StructuralMLP
from glai_core.preprocess import Standardizer

runner = CliRunner()
DATASET = "0" * 32  # never reached: the options are refused before any request


def _refused(args: list[str], *expected: str) -> str:
    result = runner.invoke(app, args)
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["--hidden", "abc"], ("--hidden", "'abc'")),
    (["--hidden", "64,"], ("--hidden", "empty entry")),
    (["--hidden", "0"], ("--hidden", "at least 1")),
    (["--reduction-factor", "x"], ("--reduction-factor", "'x'")),
    (["--reduction-factor", "nan"], ("--reduction-factor", "finite")),
    (["--sparsities", "0.5,x"], ("--sparsities", "'x'")),
])
def test_bad_submit_options_are_one_line_and_status_2(args: list[str], expected: tuple[str, ...]) -> None:
    _refused(["submit", DATASET, *args], *expected)


def test_a_bad_config_file_is_one_line_and_status_2(tmp_path: Path) -> None:
    broken = tmp_path / "job.json"
    broken.write_text('{"architecture": {"hidden": [64]},\n "seed": }')
    _refused(["submit", DATASET, "--config", str(broken)], "--config", "not valid JSON", "line 2")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _refused(["submit", DATASET, "--config", str(listed)], "JSON object", "list")
    section = tmp_path / "section.json"
    section.write_text('{"architecture": 5}')
    _refused(["submit", DATASET, "--config", str(section), "--hidden", "8"], "'architecture'", "object")
    _refused(["submit", DATASET, "--config", str(tmp_path / "missing.json")], "no such file")


# ------------------------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A real exported MLP on 3 features (classes 'cat', 'dog'), and 5 rows to predict."""
    torch.manual_seed(0)
    model = StructuralMLP(3, [4], 2)
    rows = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    standardizer = Standardizer.fit(torch.from_numpy(rows))
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(path, model, {"class_names": ["cat", "dog"]}, standardizer=standardizer)
    return path, rows


def _predict(model: Path, data: Path, *extra: str) -> list[str]:
    result = runner.invoke(app, ["predict", str(model), str(data), *extra])
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_a_csv_without_header_keeps_its_first_row(model_file: tuple[Path, np.ndarray],
                                                  tmp_path: Path) -> None:
    model, rows = model_file
    with_header = tmp_path / "named.csv"
    with_header.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    without = tmp_path / "bare.csv"
    without.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n")
    expected = _predict(model, with_header)
    assert len(expected) == 5
    assert _predict(model, without) == expected  # five rows, not four
    assert _predict(model, without, "--no-header") == expected
    assert _predict(model, with_header, "--header") == expected
    pandas_default = tmp_path / "indexed.csv"  # DataFrame.to_csv(index=False) of unnamed columns
    pandas_default.write_text("0,1,2\n" + without.read_text())
    assert _predict(model, pandas_default) == expected


def test_a_label_column_left_in_the_file_is_named(model_file: tuple[Path, np.ndarray],
                                                  tmp_path: Path) -> None:
    model, rows = model_file
    body = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("a,b,c,species\n" + "\n".join(f"{line},cat" for line in body.splitlines()) + "\n")
    _refused(["predict", str(model), str(labelled)], "column 'species'", "--label-column species")
    assert len(_predict(model, labelled, "--label-column", "species")) == 5
    numeric_label = tmp_path / "numeric.csv"
    numeric_label.write_text("a,b,c,label\n" + "\n".join(f"{line},1" for line in body.splitlines()) + "\n")
    _refused(["predict", str(model), str(numeric_label)], "4 columns", "3 features", "'label'")
    bare = tmp_path / "bare_labelled.csv"
    bare.write_text("\n".join(f"{line},dog" for line in body.splitlines()) + "\n")
    _refused(["predict", str(model), str(bare)], "column 4", "not numeric", "'dog'")


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("Adaptive", "adaptive"), ("2.5", 2.5)])
def test_reduction_factor_words_and_numbers_reach_the_body(text: str, value: object) -> None:
    from glai_client.job_options import JobOptions, job_body

    body = job_body(JobOptions(reduction_factor=text))
    assert body["architecture"]["reduction_factor"] == value
