"""Training configuration: plain dataclasses, so the library needs no web or validation framework.

The service validates requests with pydantic and converts them into these; the library trusts them.
Defaults are the ones documented in README/docs and chosen by measurement (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Solver = Literal["adam", "ridge", "ridge+adam"]


@dataclass
class ArchitectureConfig:
    """The reference MLP the user would have trained; GLAI widths are derived from it."""

    hidden: list[int] = field(default_factory=lambda: [256])
    reduction_factor: float | None = None  # None: match trainable parameters automatically


@dataclass
class StructuralConfig:
    max_epochs: int = 30
    min_epochs: int = 2
    threshold: float = 0.05  # path distance below which the structure counts as stable
    window: int = 2  # consecutive checks below the threshold before freezing
    lr: float = 1e-3
    batch_size: int = 512
    weight_decay: float = 0.0
    probe_size: int = 2000


@dataclass
class QuantitativeConfig:
    solver: Solver = "ridge+adam"
    warm_start: bool = True
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 512
    ridge_lambda: float = 1e-3
    patience: int = 3
    max_normal_matrix_bytes: int = 2 * 1024**3  # above this the ridge solve uses conjugate gradients


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
        )
