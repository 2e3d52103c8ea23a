"""Curves: read a job's metric series and downsample them on the server.

Downsampling is min/max bucketing: the first and last points are always kept; the points between are
cut into ``(max_points - 2) // 2`` buckets of consecutive steps and each bucket contributes its lowest and
highest value (one point when they coincide), in step order. Every spike and dip survives, so a
plotted curve looks like the full one, and the result never exceeds ``max_points``. (LTTB keeps the shape
slightly better but may drop the global extremes, which matter most for loss and accuracy.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from glai_common.models import CurvePoint
from glai_common.states import PHASES


def downsample(points: Sequence[Any], max_points: int | None) -> list[Any]:
    """``points`` in step order, each with ``.value``; returns a subsequence of at most ``max_points``."""
    n = len(points)
    if max_points is None or n <= max_points:
        return list(points)
    if max_points <= 2:
        return [points[0], points[-1]][:max_points]
    buckets = (max_points - 2) // 2
    if buckets == 0:  # room for one interior point: the one furthest from the endpoints' mean
        mid = (points[0].value + points[-1].value) / 2
        extreme = max(range(1, n - 1), key=lambda i: abs(points[i].value - mid))
        return [points[0], points[extreme], points[-1]]
    keep = [0]
    interior = n - 2
    for b in range(buckets):
        lo = 1 + b * interior // buckets
        hi = 1 + (b + 1) * interior // buckets
        if lo >= hi:
            continue
        idx = range(lo, hi)
        low = min(idx, key=lambda i: points[i].value)
        high = max(idx, key=lambda i: points[i].value)
        keep.extend(sorted({low, high}))
    keep.append(n - 1)
    return [points[i] for i in keep]


def _phase_order(phase: str) -> int:
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


def read_series(db: Session, job_id: str, keys: list[str] | None, phase: str | None,
                max_points: int | None) -> list[dict[str, Any]]:
    query = select(CurvePoint).where(CurvePoint.job_id == job_id)
    if keys:
        query = query.where(CurvePoint.series.in_(keys))
    if phase:
        query = query.where(CurvePoint.phase == phase)
    rows = db.scalars(query.order_by(CurvePoint.series, CurvePoint.phase, CurvePoint.step)).all()
    grouped: dict[tuple[str, str], list[CurvePoint]] = {}
    for row in rows:
        grouped.setdefault((row.series, row.phase), []).append(row)
    out = []
    for (key, ph), points in sorted(grouped.items(), key=lambda kv: (_phase_order(kv[0][1]), kv[0][0])):
        kept = downsample(points, max_points)
        out.append({"key": key, "phase": ph, "total_points": len(points),
                    "points": [{"step": p.step, "value": p.value, "wall_time": p.wall_time} for p in kept]})
    return out
