"""Feature rows for `glai predict` from a .csv or .parquet table, with a header row detected, not assumed.

pandas reads a CSV's first row as its header, so a header-less file silently lost its first sample. The
header is now detected (or set with ``header=True/False``, see ``csv_has_header``): a first row of
numbers is data, except ``0,1,2,...`` (what ``DataFrame.to_csv`` writes for unnamed columns). A column
the model does not take, typically the label left in the file, is refused with an error naming it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

LABEL_NAMES = frozenset({"label", "labels", "target", "class", "classes", "y", "category", "species"})


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_has_header(path: Path) -> bool:
    """True when the first row names columns: no cell is a number, or the cells are exactly 0, 1, ...,
    n-1. A row with numbers and words is data when the second row has numbers in the same places (a
    label left in a header-less file), else a header."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        first, second = next(reader, None), next(reader, None)
    if not first:
        raise ValueError(f"{path.name}: the file is empty")
    cells = [cell.strip() for cell in first]
    numeric = [_number(cell) for cell in cells]
    if not any(numeric):
        return True
    if all(numeric):
        return cells == [str(i) for i in range(len(cells))]
    return second is None or [_number(cell.strip()) for cell in second] != numeric


def _load(path: Path, header: bool | None) -> tuple[Any, bool]:
    import pandas as pd

    if path.suffix.lower() != ".csv":
        return pd.read_parquet(path), True
    has_header = csv_has_header(path) if header is None else header
    table = pd.read_csv(path, header=0 if has_header else None, encoding="utf-8-sig")
    if not has_header:
        table.columns = [f"column {i}" for i in range(1, table.shape[1] + 1)]
    return table, has_header


def _describe(column: Any, has_header: bool) -> str:
    return repr(str(column)) if has_header else str(column)


def _non_numeric(table: Any) -> tuple[Any, str] | None:
    """The first column holding a value that is not a number, with that value."""
    import pandas as pd

    for column in table.columns:
        values = table[column]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        present = values.dropna()
        numbers = pd.to_numeric(present, errors="coerce")
        if numbers.isna().any():
            return column, str(present[numbers.isna()].iloc[0])
    return None


def _label_like(table: Any, class_names: list[str]) -> Any | None:
    """A column that looks like the label: a label-ish name, or the only one whose values are class names."""
    named = [c for c in table.columns if str(c).strip().lower() in LABEL_NAMES]
    if len(named) == 1:
        return named[0]
    names = set(class_names)
    matching = [c for c in table.columns if names and set(table[c].dropna().astype(str)) <= names]
    return matching[0] if len(matching) == 1 else None


def _drop_advice(path: Path, column: Any, has_header: bool) -> str:
    if has_header:
        return f"drop it from {path.name} or pass --label-column {column}"
    return f"drop it from {path.name} (a file without a header row cannot name it with --label-column)"


def read_table_features(path: Path, label_column: str | None = None, n_features: int | None = None,
                        class_names: list[str] | None = None, header: bool | None = None) -> np.ndarray:
    """(n, d) float32 rows of a .csv/.parquet table; ``n_features``/``class_names`` are the model's, used
    to name the column that should not be there."""
    table, has_header = _load(path, header)
    if label_column:
        if not has_header:
            raise ValueError(f"{path.name} has no header row, so it has no column {label_column!r} "
                             "(pass --header if its first row names the columns)")
        if label_column not in table.columns:
            available = ", ".join(repr(str(c)) for c in table.columns)
            raise ValueError(f"{path.name}: no column {label_column!r} (columns: {available})")
        table = table.drop(columns=[label_column])
    bad = _non_numeric(table)
    if bad is not None:
        column, value = bad
        raise ValueError(f"{path.name}: column {_describe(column, has_header)} is not numeric (e.g. "
                         f"{value!r}); if it is the label, {_drop_advice(path, column, has_header)}")
    if n_features is not None and table.shape[1] != n_features:
        problem = f"{path.name} has {table.shape[1]} columns but the model takes {n_features} features"
        extra = _label_like(table, list(class_names or [])) if table.shape[1] == n_features + 1 else None
        if extra is not None:
            raise ValueError(f"{problem}: column {_describe(extra, has_header)} looks like the label; "
                             f"{_drop_advice(path, extra, has_header)}")
        raise ValueError(problem + ("" if has_header else " (read without a header row; pass --header if "
                                    "its first row names the columns)"))
    return table.to_numpy(dtype=np.float32)
