"""A party's data from a CSV or Parquet file: the registered datasets ``csv`` and ``parquet``.

A file is a table: one label column, feature columns (all other columns unless ``features``
names them, which also fixes their order), one row per example. Categorical labels become
class indices 0..K-1 in the order of ``classes`` (or sorted, when not given); the original
names are kept in :attr:`DataSpec.class_names`. Everything that would make a silent mess later
(a missing column, text in a feature, a hole in the data, a label the job does not know) is a
:class:`ConfigError` naming the file and the column.

pandas reads both formats (pyarrow underneath for Parquet); both are imported only when a file
is read, through the ``data`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, require
from foedus.data.datasets import Dataset, DataSpec, datasets, split_dataset

#: the extra this module's plugins need (`pip install foedus[data]`), for `foedus plugins`
REQUIRES_EXTRA = "data"

TASKS = ("classification", "regression")


def label_key(value: Any) -> str:
    """One spelling per label, so ``1``, ``1.0`` and ``"1"`` from YAML, CSV or Parquet agree."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def read_table(
    path: str, *, label: str, features: list[str] | None = None,
    task: str = "classification", classes: list[Any] | None = None, file_format: str = "csv",
) -> tuple[Dataset, DataSpec]:
    """Read one file into a :class:`Dataset` and the :class:`DataSpec` it implies."""
    frame = _read_frame(path, file_format)
    where = f"data file {path!r}"
    if task not in TASKS:
        raise ConfigError(f"task: got {task!r}; allowed: {', '.join(TASKS)}")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if not isinstance(label, str) or label not in columns:
        raise ConfigError(f"{where}: no label column {_name(label)}; columns: "
                          f"{_names(columns)}")
    features = _features(features, columns, label, where)
    x = _feature_matrix(frame, features, where)
    y_raw = frame[label]
    if y_raw.isna().any():
        raise ConfigError(f"{where}: label column {label!r} has {int(y_raw.isna().sum())} "
                          "missing values")
    if task == "regression":
        import pandas as pd

        if not pd.api.types.is_numeric_dtype(y_raw) or pd.api.types.is_bool_dtype(y_raw):
            raise ConfigError(f"{where}: label column {label!r} is not numeric, so it cannot be "
                              "a regression target")
        spec = DataSpec(len(features), (), task, feature_names=tuple(features))
        return Dataset(x, y_raw.to_numpy(dtype=np.float32)), spec
    y, names = _class_indices(y_raw.to_numpy(), classes, label, where)
    spec = DataSpec(len(features), tuple(range(len(names))), task, feature_names=tuple(features),
                    class_names=names)
    return Dataset(x, y), spec


def _read_frame(path: str, file_format: str) -> Any:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"path: expected the path of a {file_format} file, got {path!r}")
    if not Path(path).is_file():
        raise ConfigError(f"data file {path!r} does not exist")
    pd = require("pandas", "data")
    try:
        if file_format == "parquet":
            require("pyarrow", "data")
            frame = pd.read_parquet(path, engine="pyarrow")
        else:
            frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise ConfigError(f"data file {path!r} is empty") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:  # pyarrow errors are ValueErrors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"data file {path!r} is not a readable {file_format} file: "
                          f"{first}") from exc
    if len(frame) == 0:
        raise ConfigError(f"data file {path!r} has no rows")
    return frame


def _features(
    features: list[str] | None, columns: list[str], label: str, where: str
) -> list[str]:
    if features is None:
        chosen = [c for c in columns if c != label]
    elif not isinstance(features, list | tuple) or not all(
        isinstance(f, str) for f in features
    ):
        raise ConfigError(f"features: expected a list of column names, got {features!r}")
    else:
        chosen = list(features)
    missing = [f for f in chosen if f not in columns]
    if missing:
        raise ConfigError(f"{where}: no feature column {missing[0]!r}; columns: "
                          f"{', '.join(columns)}")
    if label in chosen:
        raise ConfigError(f"{where}: the label column {label!r} cannot also be a feature")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"features: a column is named twice in {chosen}")
    if not chosen:
        raise ConfigError(f"{where}: no feature columns besides the label {label!r}")
    return chosen


def _feature_matrix(frame: Any, features: list[str], where: str) -> np.ndarray:
    import pandas as pd

    text = [f for f in features if not pd.api.types.is_numeric_dtype(frame[f])]
    if text:
        raise ConfigError(
            f"{where}: feature column {_name(text[0])} is not numeric; encode it as numbers "
            "first or leave it out of features"
        )
    holes = {f: int(n) for f in features if (n := frame[f].isna().sum())}
    if holes:
        listed = ", ".join(f"{f!r} ({n})" for f, n in holes.items())
        raise ConfigError(f"{where}: missing values (NaN) in feature columns {listed}; fill or "
                          "drop them first")
    x: np.ndarray = frame[features].to_numpy(dtype=np.float32)
    return x


def _class_indices(
    raw: np.ndarray, classes: list[Any] | None, label: str, where: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    keys = np.array([label_key(v) for v in raw], dtype=object)
    if classes is None:
        if raw.dtype.kind == "f" and not all(float(v).is_integer() for v in raw):
            raise ConfigError(f"{where}: label column {label!r} holds fractional numbers; set "
                              "task: regression, or give classes")
        names = tuple(label_key(v) for v in _sorted_unique(raw))
    else:
        if not isinstance(classes, list | tuple) or not classes:
            raise ConfigError(f"classes: expected a non-empty list of labels, got {classes!r}")
        names = tuple(label_key(c) for c in classes)
        if len(set(names)) != len(names):
            raise ConfigError(f"classes: a label is listed twice in {list(classes)}")
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({k for k in keys if k not in index})
    if unknown:
        raise ConfigError(f"{where}: label column {_name(label)} has values not in classes "
                          f"{[n[:40] for n in names[:10]]} ({len(unknown)} distinct)")
    return np.array([index[k] for k in keys], dtype=np.int64), names


def _sorted_unique(values: np.ndarray) -> list[Any]:
    try:
        return list(np.unique(values))
    except TypeError:  # mixed types in one column: sort by their spelling
        return sorted(set(values.tolist()), key=label_key)


def _load(
    file_format: str, path: str, label: str, features: list[str] | None, task: str,
    classes: list[Any] | None, test_fraction: float, seed: int,
) -> tuple[Dataset, Dataset, DataSpec]:
    data, spec = read_table(path, label=label, features=features, task=task, classes=classes,
                            file_format=file_format)
    train, test = split_dataset(data, test_fraction, seed, stratify=task == "classification")
    return train, test, spec


@datasets.register("csv")
def csv_file(
    path: str, label: str, features: list[str] | None = None, task: str = "classification",
    classes: list[Any] | None = None, test_fraction: float = 0.2, seed: int = 0,
) -> tuple[Dataset, Dataset, DataSpec]:
    """A CSV file with a header row; ``test_fraction`` of its rows held out (seeded)."""
    return _load("csv", path, label, features, task, classes, test_fraction, seed)


@datasets.register("parquet")
def parquet_file(
    path: str, label: str, features: list[str] | None = None, task: str = "classification",
    classes: list[Any] | None = None, test_fraction: float = 0.2, seed: int = 0,
) -> tuple[Dataset, Dataset, DataSpec]:
    """A Parquet file (read with pandas and pyarrow); as :func:`csv_file` otherwise."""
    return _load("parquet", path, label, features, task, classes, test_fraction, seed)


def _name(value: object) -> str:
    """A column name or label for a message, cut short: errors about a data file name its
    columns but never echo its cells, and a header can be anything."""
    text = repr(value)
    return text if len(text) <= 42 else text[:39] + "...'"


def _names(values: list[str]) -> str:
    """Up to 10 column names, each cut to 40 characters."""
    shown = ", ".join(v if len(v) <= 40 else v[:37] + "..." for v in values[:10])
    return shown + (f", ... ({len(values)} in all)" if len(values) > 10 else "")
