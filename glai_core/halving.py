"""Successive halving for a sweep's heads: at each rung, only the best 1/eta of a kind's heads train on.

The synchronous form of ASHA's rule (Li et al. 2020; Determined's default searcher, Ray Tune's
``ASHAScheduler``): rungs are epochs of the shared pass at ``first_rung * eta**i``. At a rung, the heads of
one kind that are still in the race (training, or done with a score) are ranked by validation accuracy,
then loss, and the top ``max(1, len // eta)`` stay. A head below the cut that is still training stops
there, at its best weights. Finished heads below the cut keep what they finished, except GLAI structures
waiting for phase 2: they are not fitted. Eight heads at eta 2 become 4, 2, then 1, so the pass costs
about ``first_rung * (8 + 4 + 2)`` head-epochs plus one head's rest, not eight heads' whole training.

The price is ASHA's: a head that starts slowly (a small learning rate) can be cut before it catches up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Halving:
    """``eta``: keep 1/eta at each rung; ``first_rung``: epochs before the first cut (None: half the
    kind's adapted patience, rounded up; measured in ``bench.sweep``: at the whole patience the MLP's
    first rung on tweets came at 5 of one head's 13 epochs and eight heads cost 3.6x one head, at half
    every task stayed under 3x and the best finished head matched or beat one head on 7 of 8)."""

    eta: int = 2
    first_rung: int | None = None

    def __post_init__(self) -> None:
        if self.eta < 2 or (self.first_rung is not None and self.first_rung < 1):
            raise ValueError(f"halving: eta must be >= 2 and first_rung >= 1 (got {self.eta}, "
                             f"{self.first_rung})")

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Halving | None:
        """The job spec's ``sweep.halving`` (None or ``{"enabled": false}``: no halving)."""
        if not spec or not spec.get("enabled", True):
            return None
        return cls(int(spec.get("eta") or 2), None if spec.get("first_rung") is None
                   else int(spec["first_rung"]))

    def first(self, patience: int | None) -> int:
        if self.first_rung is not None:
            return self.first_rung
        return max(1, math.ceil((patience or 4) / 2))

    def is_rung(self, epoch: int, patience: int | None) -> bool:
        """Whether the pass's ``epoch`` (1-based) is a rung: first, first*eta, first*eta**2, ..."""
        rung = self.first(patience)
        while rung < epoch:
            rung *= self.eta
        return rung == epoch


def cut(scores: dict[int, tuple[float, float]], eta: int) -> set[int]:
    """Ids kept at a rung: the top ``max(1, len // eta)`` by (accuracy, then lower loss, then lower id)."""
    ranked = sorted(scores, key=lambda i: (-scores[i][0], scores[i][1], i))
    return set(ranked[:max(1, len(ranked) // eta)])


__all__ = ["Halving", "cut"]
