"""A job's data: every client's share, the server's evaluation set and the :class:`DataSpec`.

Two ways to get shares, chosen by the job file's ``data.partition``:

* **split one dataset** (``iid``, ``dirichlet``, ``quantity``, ``column``): the registered
  dataset is loaded once, a test split held out for the server, the rest partitioned. Good for
  demos, tests and simulations.
* **each client its own data** (``files``): no split. Client ``i`` calls the dataset's loader
  with ``{client}`` in its options replaced by its id (``path: data/{client}.csv`` becomes
  ``data/client-003.csv``) and ``test_fraction=0``, and trains on every row it gets. A client
  process reads only its own file. The columns and label set are agreed in the job file
  (``options.features``, ``options.classes``), because the server must build the model before
  it sees any data and a client that lacks a class must still agree on the class indices. The
  server evaluates the global model only if ``data.server_options`` names its own data.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np

from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.data.files import TASKS, label_key
from foedus.data.partition import column_index, drop_column, partition

PLACEHOLDER = "{client}"
SERVER_ID = "server"  # what {client} becomes in data.server_options
_RESERVED = ("test_fraction", "seed")  # set by the job (data.test_fraction, seed), not options


@dataclass(frozen=True)
class DataSection:
    """The ``data`` section of a job file: where clients' data comes from (docs/data.md
    explains every key). Defined here, beside the code that reads it, so ``data`` needs
    nothing from ``config``."""

    dataset: str = "digits"
    partition: str = "dirichlet"
    alpha: float = 0.5  # dirichlet (label skew) and quantity (size skew)
    test_fraction: float = 0.2
    options: dict[str, Any] = field(default_factory=dict)  # passed to the dataset's loader
    min_size: int = 2  # dirichlet and quantity: rows every client gets at least
    column: int | str | None = None  # partition: column: the feature (index or name) to split by
    keep_column: bool = False  # partition: column: keep that feature for training
    server_options: dict[str, Any] = field(default_factory=dict)  # files: the server's test data


@dataclass
class JobData:
    """What :func:`load_job_data` returns."""

    shares: Sequence[Dataset]
    test: Dataset  # empty when the server has no data to evaluate on
    spec: DataSpec
    server_evaluates: bool


class ClientShares(Sequence[Dataset]):
    """Clients' datasets loaded on first use, so a client process reads only its own file."""

    def __init__(self, count: int, load: Callable[[int], Dataset]) -> None:
        self._count = count
        self._load = load
        self._cache: dict[int, Dataset] = {}

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Dataset: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Dataset]: ...
    def __getitem__(self, index: int | slice) -> Dataset | Sequence[Dataset]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"client {index} of {self._count}")
        if index not in self._cache:
            self._cache[index] = self._load(index)
        return self._cache[index]


def load_job_data(
    data: DataSection, client_ids: Sequence[str], seed: int, *,
    clients: Collection[int] | None = None, server_data: bool = True,
) -> JobData:
    """Load the job's data as ``data`` says.

    ``clients`` are the indices whose shares this process needs now (``None``: all), and
    ``server_data`` whether it needs the server's evaluation set; both matter only for
    ``files``, where anything not loaded now is loaded on first use.
    """
    reserved = [k for k in _RESERVED if k in data.options]
    if reserved:
        top = "seed" if reserved[0] == "seed" else "data.test_fraction"
        raise ConfigError(f"data.options.{reserved[0]}: set by the job; use {top} instead")
    if data.partition == "files":
        return _files(data, client_ids, seed, clients, server_data)
    if _mentions_client(data.options):
        raise ConfigError(f"data.options: {PLACEHOLDER} in an option means each client reads "
                          "its own data; that needs partition: files")
    train, test, spec = _load(data.dataset, data.options, data.test_fraction, seed)
    shares = partition(
        train, len(client_ids), scheme=data.partition, alpha=data.alpha, seed=seed,
        min_size=data.min_size, column=data.column, feature_names=spec.feature_names,
        keep_column=data.keep_column,
    )
    if data.partition == "column" and not data.keep_column:
        assert data.column is not None  # checked by partition()
        index = column_index(data.column, spec.feature_names) % spec.n_features
        names = tuple(n for i, n in enumerate(spec.feature_names) if i != index)
        test = drop_column(test, index)
        spec = replace(spec, n_features=spec.n_features - 1, feature_names=names)
    return JobData(shares, test, spec, server_evaluates=True)


def declared_spec(options: dict[str, Any]) -> DataSpec:
    """The DataSpec a ``files`` job declares: ``features``, ``task`` and ``classes``."""
    features = options.get("features")
    if not isinstance(features, list) or not features or not all(
        isinstance(f, str) for f in features
    ):
        raise ConfigError(
            "data.options.features: required with partition: files, as a list of column names "
            "(the server builds the model before it sees any data, and every client must use "
            f"the same columns in the same order); got {features!r}"
        )
    task = options.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"data.options.task: got {task!r}; allowed: {', '.join(TASKS)}")
    if task == "regression":
        return DataSpec(len(features), (), task, feature_names=tuple(features))
    classes = options.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ConfigError(
            "data.options.classes: required with partition: files for classification, as the "
            "list of every label (all clients must agree on the label set up front, even one "
            f"that never sees some class); got {classes!r}"
        )
    names = tuple(label_key(c) for c in classes)
    return DataSpec(len(features), tuple(range(len(classes))), task,
                    feature_names=tuple(features), class_names=names)


def _files(
    data: DataSection, client_ids: Sequence[str], seed: int,
    preload: Collection[int] | None, server_data: bool,
) -> JobData:
    if not _mentions_client(data.options):
        raise ConfigError(f"data.options: partition: files needs {PLACEHOLDER} in an option "
                          f"(e.g. path: data/{PLACEHOLDER}.csv) so each client reads its own "
                          "data")
    spec = declared_spec(data.options)

    def load(index: int) -> Dataset:
        who = client_ids[index]
        share, _, got = _load(data.dataset, fill_client(data.options, who), 0.0, seed)
        _check_agrees(got, spec, who)
        return share

    shares = ClientShares(len(client_ids), load)
    for index in range(len(client_ids)) if preload is None else preload:
        shares[index]  # load now: a missing or malformed file fails before the job starts
    if data.server_options and server_data:
        options = fill_client({**data.options, **data.server_options}, SERVER_ID)
        test, _, got = _load(data.dataset, options, 0.0, seed)
        _check_agrees(got, spec, "the server")
        return JobData(shares, test, spec, server_evaluates=True)
    empty_y = np.zeros(0, np.float32 if spec.task == "regression" else np.int64)
    return JobData(shares, Dataset(np.zeros((0, spec.n_features), np.float32), empty_y), spec,
                   server_evaluates=False)


def _load(
    name: str, options: dict[str, Any], test_fraction: float, seed: int
) -> tuple[Dataset, Dataset, DataSpec]:
    try:
        return load_dataset(name, test_fraction=test_fraction, seed=seed, **options)
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from exc


def _check_agrees(got: DataSpec, declared: DataSpec, who: str) -> None:
    mine = (got.n_features, got.classes, got.task)
    if mine != (declared.n_features, declared.classes, declared.task):
        raise ConfigError(
            f"data: {who}'s data has {got.n_features} features, {len(got.classes)} classes "
            f"({got.task}) but the job declares {declared.n_features} features, "
            f"{len(declared.classes)} classes ({declared.task})"
        )


def fill_client(value: Any, who: str) -> Any:
    """Replace ``{client}`` in every string of ``value`` (nested lists and mappings too)."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, who)
    if isinstance(value, dict):
        return {k: fill_client(v, who) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_client(v, who) for v in value]
    return value


def _mentions_client(value: Any) -> bool:
    return bool(fill_client(value, "\0") != value)
