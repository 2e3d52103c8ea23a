"""What a job is, read from its stored spec: one reading for the API (lineage, presenters) and the worker."""

from __future__ import annotations

from typing import Any

KINDS = ("train", "incremental", "merge", "sweep")


def kind_of(spec: dict[str, Any]) -> str:
    """``merge`` (a ``merge`` section), ``incremental`` (a ``lineage`` section: a child of a parent),
    ``sweep`` (a ``sweep`` grid) or a plain ``train`` job."""
    if spec.get("merge"):
        return "merge"
    if spec.get("lineage"):
        return "incremental"
    if spec.get("sweep"):
        return "sweep"
    return "train"


__all__ = ["KINDS", "kind_of"]
