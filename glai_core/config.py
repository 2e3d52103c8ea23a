"""Training configuration: plain dataclasses, so the library needs no web or validation framework.

The service validates requests with pydantic and converts them into these; the library trusts them.
Defaults are the ones documented in README/docs and chosen by measurement (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Solver = Literal["auto", "adam", "ridge", "ridge+adam", "lbfgs", "ridge+lbfgs"]


@dataclass
class ArchitectureConfig:
    """The reference MLP the user would have trained; GLAI widths are derived from it."""

    hidden: list[int] = field(default_factory=lambda: [256])
    # None: match trainable parameters; "adaptive": sized by the data (glai_core.defaults), not matched
    reduction_factor: float | str | None = None


@dataclass
class StructuralConfig:
    """Stop rule: path distance < ``threshold`` for ``window`` consecutive checks with no new best
    validation loss over them, after ``min_epochs``.

    A check compares the gates on the probe set with those of the previous check, ``check_interval``
    epochs earlier. Fields left ``None`` are chosen from the data by ``glai_core.defaults`` (batch near
    N/32, budgets in optimiser steps), so a 150-row table and Fashion-MNIST both get enough steps.
    ``max_epochs`` always wins: with max_epochs below min_epochs the phase simply runs max_epochs.
    """

    max_epochs: int | None = None
    min_epochs: int | None = None
    threshold: float = 0.02  # path distance per 100 optimiser steps below which the structure is stable
    window: int = 2  # consecutive checks below the threshold before freezing
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float = 0.0
    probe_size: int = 2000
    check_interval: int | None = None  # epochs between two structure checks (path distances)
    patience: int | None = None  # epochs without validation improvement before S freezes at its best


@dataclass
class QuantitativeConfig:
    """Phase 2 defaults, chosen by measurement (docs/performance.md, docs/benchmarks.md).

    ``auto`` (default) asks a cost model (``solvers.choose_phase2``) that estimates seconds on the device:
    the faster first-order method, full-batch L-BFGS on cross-entropy (``glai_core.lbfgs``: tens of large
    passes, the choice on tables up to tens of thousands of rows) or mini-batch Adam (large splits, where
    one pass of stochastic steps beats one quasi-Newton step), preceded by the exact closed form (primal or
    dual Cholesky, the cheaper) when that is cheap. With gates cached the problem is convex, so every
    solver keeps its best validation point and the phase never ends below its warm start.

    Adam from the warm start: Theta's entries are products of S's weights (rms ~4e-3), so Adam's
    per-parameter steps must be small, and the right size differs by task (tweets wanted 1e-4, MNIST-5k
    6e-4). ``backtrack`` makes one default serve both: the problem is convex, so an epoch that improves
    neither validation accuracy nor loss overshot; the weights go back to the best point and the rate is
    halved. Measured with lr 6e-4 + backtracking against the old 3e-4 without: tweets +0.28 pp over the
    MLP instead of -0.35, Fashion-EfficientNet +0.30 instead of -0.08, MNIST-5k +0.10 instead of -0.20 and
    at the target in 3 epochs instead of 5, Fashion-MNIST pixels -0.61 instead of -0.57
    (docs/performance.md). The phase keeps its best validation point and stops after ``patience`` epochs
    without improvement, so it never ends below its warm start. ridge_lambda is
    relative to mean diag(F^T F); the exact solvers try ridge_lambda * 10^k for |k| <= ridge_lambda_search.
    """

    solver: Solver = "auto"
    warm_start: bool = True
    epochs: int | None = None  # None: from the data (glai_core.defaults)
    lr: float = 6e-4
    batch_size: int | None = None
    schedule: Literal["constant", "linear"] = "linear"
    ridge_lambda: float = 1e-1  # relative to mean diag(F^T F); the centre of the validation search
    ridge_lambda_search: int = 1  # also try ridge_lambda * 10^k for |k| <= this (exact solvers only)
    patience: int | None = None  # the first, largest-lr epochs may dip below the warm start: allow recovery
    backtrack: bool = True  # an epoch without improvement: restore the best point, halve the lr
    max_normal_matrix_bytes: int = 2 * 1024**3  # above this (primal and dual) the ridge solve uses CG
    cg_max_iter: int = 200
    cg_tol: float = 1e-5
    lbfgs_iterations: int = 100  # full-batch L-BFGS on cross-entropy (glai_core.lbfgs): at most this many
    lbfgs_eval_every: int = 5  # iterations between two validation scores (one curve point each)
    lbfgs_patience: int = 3  # scores without improvement before L-BFGS stops
    max_feature_bytes: int = 512 * 1024**2  # L-BFGS builds the explicit path features up to this size
    # First-order phase 2 updates Theta only along the top ``input_rank`` principal directions of the
    # inputs (plus the bias column) when d >= 2 * input_rank; None or 0: the full input space.
    input_rank: int | None = None

    @property
    def ridge_lambdas(self) -> list[float]:
        span = range(-self.ridge_lambda_search, self.ridge_lambda_search + 1)
        return [self.ridge_lambda * 10.0**k for k in span]


@dataclass
class PruningConfig:
    enabled: bool = True
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.9])
    structured: bool = True
    finetune_epochs: int = 2
    lr: float = 1e-4


@dataclass
class BaselineConfig:
    """The parameter-matched MLP; fields left ``None`` are chosen from the data (glai_core.defaults)."""

    enabled: bool = True
    max_epochs: int | None = None
    patience: int | None = None
    lr: float | None = None
    batch_size: int | None = None


@dataclass
class TrainConfig:
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    structural: StructuralConfig = field(default_factory=StructuralConfig)
    quantitative: QuantitativeConfig = field(default_factory=QuantitativeConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    # Training precision: "auto" = fp32 weights with TF32 matmuls on CUDA; on CPU bf16 products where the
    # CPU has bf16 arithmetic (AVX-512 BF16, AMX), else fp32. "bf16" asks for bf16 products (mixed
    # precision: fp32 weights, gradients and Adam), "fp32" for neither. Evaluation and closed-form solves
    # stay fp32/fp64.
    precision: str = "auto"
    validation_fraction: float = 0.2  # held out (stratified, seeded) when the data has no validation split
    # Bytes the training data (both splits) may take on the device; above it batches are gathered from
    # host memory per step (glai_core.streaming). None: half the GPU's free memory on CUDA, unlimited on CPU.
    device_memory_budget_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(
            architecture=ArchitectureConfig(**data.get("architecture", {})),
            structural=StructuralConfig(**data.get("structural", {})),
            quantitative=QuantitativeConfig(**data.get("quantitative", {})),
            pruning=PruningConfig(**data.get("pruning", {})),
            baseline=BaselineConfig(**data.get("baseline", {})),
            seed=data.get("seed", 0),
            device=data.get("device", "auto"),
            precision=data.get("precision", "auto"),
            validation_fraction=data.get("validation_fraction", 0.2),
            device_memory_budget_bytes=data.get("device_memory_budget_bytes"),
        )
