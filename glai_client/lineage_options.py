"""`glai submit`'s lineage and sweep options (--parent, --rows, --appended, --phase2, --sweep) turned into
the request body's `parent_job_id`, `incremental` and `sweep`, with one clear error per bad value."""

from __future__ import annotations

from typing import Any

from glai_client.job_options import BadInput, auto_or_number, number

SWEEP_KEYS = ("lr", "reduction_factor", "seed")
ROWS = ("union", "own")
PHASE2 = ("auto", "statistics", "refit")


def sweep_values(items: list[str]) -> dict[str, Any]:
    """``--sweep lr=1e-3,3e-3 --sweep seed=0,1`` -> {"lr": [0.001, 0.003], "seed": [0, 1]};
    ``--sweep halving=2`` adds successive halving at eta 2 ({"halving": {"eta": 2}})."""
    grid: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if sep and key == "halving":
            try:
                grid[key] = {"eta": int(text)}
            except ValueError:
                raise BadInput(f"--sweep halving: {text!r} must be a whole number (eta: 1/eta of the heads "
                               "go on at each rung), e.g. halving=2") from None
            continue
        if not sep or key not in SWEEP_KEYS:
            raise BadInput(f"--sweep: {item!r}: give KEY=V1,V2 with KEY one of {', '.join(SWEEP_KEYS)} "
                           "(e.g. --sweep lr=1e-3,3e-3), or halving=ETA")
        values = [v.strip() for v in text.split(",")]
        if not values or any(not v for v in values):
            raise BadInput(f"--sweep: {item!r} has an empty value")
        if key in grid:
            raise BadInput(f"--sweep: {key} given twice; list every value once: {key}=A,B")
        if key == "lr":
            grid[key] = [number("--sweep lr", v, "1e-3") for v in values]
        elif key == "reduction_factor":
            grid[key] = [auto_or_number("--sweep reduction_factor", v) for v in values]
        else:
            try:
                grid[key] = [int(v) for v in values]
            except ValueError:
                raise BadInput(f"--sweep seed: {text!r} must be whole numbers, e.g. seed=0,1,2") from None
    return grid


def apply(body: dict[str, Any], parent: str | None, rows: str | None, appended: bool, phase2: str | None,
          sweep: list[str]) -> dict[str, Any]:
    """``body`` with the lineage and sweep options that were given."""
    if (rows or appended or phase2) and parent is None:
        raise BadInput("--rows, --appended and --phase2 describe a child job: give --parent JOB")
    if rows is not None and rows not in ROWS:
        raise BadInput(f"--rows: {rows!r} is not one of {', '.join(ROWS)}")
    if phase2 is not None and phase2 not in PHASE2:
        raise BadInput(f"--phase2: {phase2!r} is not one of {', '.join(PHASE2)}")
    if parent is not None:
        body["parent_job_id"] = parent
        incremental = {**({"rows": rows} if rows else {}), **({"data": "appended"} if appended else {}),
                       **({"phase2": phase2} if phase2 else {})}
        if incremental:
            body["incremental"] = {**(body.get("incremental") or {}), **incremental}
    if sweep:
        body["sweep"] = {**(body.get("sweep") or {}), **sweep_values(sweep)}
    return body
