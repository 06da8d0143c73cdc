"""Datasets that ship inside installed packages, so every run works offline.

Each loader returns a train split, a held-out test split and a :class:`DataSpec` (feature count
and the full label set, which every client must agree on up front even if it never sees a class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from foedus.core.errors import ConfigError
from foedus.core.registry import Registry
from foedus.data.stratified import distinct, shuffled_split, stratified_split


@dataclass(frozen=True)
class Dataset:
    """Features and labels of one party's data, kept as numpy arrays."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data before seeing any of it."""

    n_features: int
    classes: tuple[int, ...]
    task: str = "classification"  # or "regression": classes is empty; metrics are loss=MSE, r2
    #: column names, when the data came with them (files); lets ``partition: column`` use a name
    feature_names: tuple[str, ...] = ()
    #: the original label of class ``i`` (e.g. ``"malignant"``) when labels were mapped to 0..K-1
    class_names: tuple[str, ...] = ()


Loader = Callable[..., tuple[Dataset, Dataset, DataSpec]]
datasets: Registry[tuple[Dataset, Dataset, DataSpec]] = Registry("dataset")


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, scale: str
) -> tuple[Dataset, Dataset, DataSpec]:
    # scikit-learn's stratified split, drawn in numpy (importing sklearn costs as much as torch)
    train, test = stratified_split(y, test_fraction, seed)
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
    if scale == "standard":
        mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    spec = DataSpec(int(x.shape[1]), tuple(int(c) for c in distinct(y)))
    return (
        Dataset(x_tr.astype(np.float32), y_tr.astype(np.int64)),
        Dataset(x_te.astype(np.float32), y_te.astype(np.int64)),
        spec,
    )


@datasets.register("digits")
def digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, DataSpec]:
    """scikit-learn's 1,797 8x8 handwritten digits, pixels scaled to [0, 1]."""
    x, y = _bundled_digits()
    return _split(x / 16.0, y, test_fraction, seed, scale="none")


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits file scikit-learn ships, read with numpy: the same values as
    ``sklearn.datasets.load_digits``, without importing ``sklearn.datasets``, which costs most
    of a small job's start-up (it imports pandas and every dataset fetcher). Falls back to
    ``load_digits`` if the file is not where scikit-learn keeps it."""
    import gzip
    import io
    from importlib.util import find_spec
    from pathlib import Path

    found = find_spec("sklearn")  # locates the package without importing it
    locations = found.submodule_search_locations if found is not None else None
    path = Path(next(iter(locations or [""]))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return np.asarray(x), np.asarray(y)
    text = io.BytesIO(gzip.decompress(path.read_bytes()))
    table: np.ndarray
    try:  # the file holds integers: read as such, a third faster than as floats
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except ValueError:  # a file another scikit-learn version ships might not
        text.seek(0)
        table = np.loadtxt(text, delimiter=",")
    return table[:, :-1].astype(np.float64), table[:, -1].astype(int)


def _bundled(loader_name: str) -> Loader:
    def load(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, DataSpec]:
        import sklearn.datasets

        x, y = getattr(sklearn.datasets, loader_name)(return_X_y=True)
        return _split(x, y, test_fraction, seed, scale="standard")

    load.__doc__ = f"scikit-learn's bundled {loader_name[5:]} data, standardised."
    return load


for _name in ("iris", "wine", "breast_cancer"):
    datasets.register(_name)(_bundled(f"load_{_name}"))


@datasets.register("diabetes")
def diabetes(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, DataSpec]:
    """scikit-learn's 442-patient diabetes progression data: a regression task.

    Features and target are standardised with the training split's statistics, so a model's
    mean squared error reads as a fraction of the target's variance (``r2`` is about ``1 - mse``)
    and the SGD learning rates that suit the classification datasets also suit this one
    (full-batch steps need smaller ones: vertical FL's linear model defaults to 0.1 here, as
    0.5 diverges). Use the ``iid`` partition: Dirichlet label skew needs discrete labels.
    """
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    train, test = shuffled_split(len(y), test_fraction, seed)  # train_test_split's rows
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
    y_mean, y_std = y_tr.mean(), y_tr.std()
    spec = DataSpec(int(x.shape[1]), (), task="regression")
    return (
        Dataset(((x_tr - mean) / std).astype(np.float32), ((y_tr - y_mean) / y_std).astype(
            np.float32)),
        Dataset(((x_te - mean) / std).astype(np.float32), ((y_te - y_mean) / y_std).astype(
            np.float32)),
        spec,
    )


@datasets.register("synthetic")
def synthetic(
    n_samples: int = 4000, n_features: int = 20, n_classes: int = 4, test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Dataset, Dataset, DataSpec]:
    """A generated classification problem of any size (scikit-learn's make_classification)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=max(2, n_features // 2),
        n_classes=n_classes, random_state=seed,
    )
    return _split(x, y, test_fraction, seed, scale="standard")


def split_dataset(
    data: Dataset, test_fraction: float, seed: int, *, stratify: bool
) -> tuple[Dataset, Dataset]:
    """Hold out ``test_fraction`` of ``data`` (seeded); ``0`` keeps every row for training.

    Stratified when asked and possible (every class has two rows or more), so small classes
    appear on both sides.
    """
    if test_fraction == 0:
        return data, data.subset(np.arange(0))
    # scikit-learn's train_test_split, drawn in numpy: importing sklearn.model_selection cost a
    # torch job reading a file about a second
    _, counts = np.unique(data.y, return_counts=True)
    try:
        if stratify and counts.min() >= 2:
            train, test = stratified_split(data.y, test_fraction, seed)
        else:
            train, test = shuffled_split(len(data), test_fraction, seed)
    except ValueError as exc:  # e.g. too few rows for the fraction
        raise ConfigError(f"cannot hold out test_fraction={test_fraction} of {len(data)} rows: "
                          f"{exc}") from exc
    return data.subset(np.sort(train)), data.subset(np.sort(test))


def load_dataset(name: str, **params: object) -> tuple[Dataset, Dataset, DataSpec]:
    """Load a registered dataset by name, e.g. ``load_dataset("digits", seed=1)``."""
    return datasets.create(name, **params)
