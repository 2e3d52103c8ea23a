"""Read features for `glai predict`: .npz (array X, or the only array), .csv or .parquet tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_features(path: Path, label_column: str | None = None) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            key = "X" if "X" in names else "x" if "x" in names else names[0] if len(names) == 1 else None
            if key is None:
                raise ValueError(f"{path.name}: no array named X (found {', '.join(names)})")
            return np.asarray(archive[key], dtype=np.float32)
    if suffix in {".csv", ".parquet", ".pq"}:
        import pandas as pd

        table = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if label_column:
            if label_column not in table.columns:
                raise ValueError(f"{path.name}: no column {label_column!r}")
            table = table.drop(columns=[label_column])
        return table.to_numpy(dtype=np.float32)
    raise ValueError(f"{path.name}: use a .npz, .csv or .parquet file")
