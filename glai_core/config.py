"""Training configuration: plain dataclasses, so the library needs no web or validation framework.

The service validates requests with pydantic and converts them into these; the library trusts them.
Defaults are the ones documented in README/docs and chosen by measurement (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Solver = Literal["auto", "adam", "ridge", "ridge+adam"]


@dataclass
class ArchitectureConfig:
    """The reference MLP the user would have trained; GLAI widths are derived from it."""

    hidden: list[int] = field(default_factory=lambda: [256])
    reduction_factor: float | None = None  # None: match trainable parameters automatically


RECOMMENDED_MIN_EPOCHS = 6  # measured best stop-rule floor for time to target (see StructuralConfig)


@dataclass
class StructuralConfig:
    """Stop rule: path distance < ``threshold`` for ``window`` consecutive epochs, after ``min_epochs``.

    The epoch-to-epoch path distance falls below 0.05 within 2-5 epochs on every benchmark task (digits,
    MNIST-1D, MNIST-5k, tweets+MiniLM, Fashion-MNIST+EfficientNet; Fashion-MNIST pixels hovers at
    ~0.03), so the distance alone would freeze at epoch 2-4. ``min_epochs`` = 6 is measured best for time to
    target (docs/performance.md, "stop rule"): S is 3-10x narrower than the reference MLP, so its epochs
    are cheap, and on frozen features S itself keeps gaining fast (Fashion-EfficientNet 0.851 at epoch 3,
    0.869 at 6; tweets 0.794 -> 0.797), which shortens phase 2: Fashion-EfficientNet went from 1.2x to
    3.0x the MLP, tweets from 0.3x to ~1x, Fashion-MNIST pixels from -1.05 to -0.7 pp; MNIST-5k stayed
    ~1.4x. MNIST-1D is the exception (S barely learns in 6 epochs; GLAI falls short there either way).
    ``max_epochs`` always wins: with max_epochs below min_epochs the phase simply runs max_epochs.
    """

    max_epochs: int = 30
    min_epochs: int = 6
    threshold: float = 0.05  # path distance below which the structure counts as stable
    window: int = 2  # consecutive checks below the threshold before freezing
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.0
    probe_size: int = 2000


@dataclass
class QuantitativeConfig:
    """Phase 2 defaults, chosen by measurement (docs/performance.md, docs/benchmarks.md).

    ``auto`` (default) asks a cost model (``solvers.choose_phase2``): the exact closed form (primal or dual
    Cholesky, the cheaper) followed by Adam when it costs at most ``auto_budget_epochs`` Adam epochs, else
    Adam alone from the warm start with cached gates. Measured on the benchmark tasks: the closed form is a
    fraction of an epoch when D = h'(d+1) is small (MNIST-1D, digits) but 10-30 epochs' worth for
    parameter-matched heads on 400-1300-d inputs, where Adam from the warm start reaches the target first.

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
    epochs: int = 10
    lr: float = 6e-4
    batch_size: int = 512
    schedule: Literal["constant", "linear"] = "linear"
    ridge_lambda: float = 1e-1  # relative to mean diag(F^T F); the centre of the validation search
    ridge_lambda_search: int = 1  # also try ridge_lambda * 10^k for |k| <= this (exact solvers only)
    patience: int = 4  # the first, largest-lr epoch may dip below the warm start (tweets): allow recovery
    backtrack: bool = True  # an epoch without improvement: restore the best point, halve the lr
    max_normal_matrix_bytes: int = 2 * 1024**3  # above this (primal and dual) the ridge solve uses CG
    cg_max_iter: int = 200
    cg_tol: float = 1e-5
    auto_budget_epochs: float = 12.0  # auto: closed form only if it costs at most this many Adam epochs
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
    enabled: bool = True
    max_epochs: int = 30
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 512


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
