"""Splitting one dataset into clients' shares.

Four schemes, all deterministic under a seed, so a run and its re-run give every client the
same rows:

* ``iid``: shuffle and deal out evenly.
* ``dirichlet``: label skew. Dirichlet(alpha) label skew (Hsu et al., 2019) is the standard
  non-IID benchmark: small alpha gives each client few classes, large alpha approaches IID.
* ``quantity``: size skew. Client sizes follow Dirichlet(alpha) proportions over the clients,
  labels stay IID within a client, so only how *much* data a client has differs.
* ``column``: natural split. One client per distinct value of a feature column (a hospital id,
  a region), in sorted order; the column is dropped from the features by default because an id
  that is constant within a client teaches the model nothing but where the data came from.

(``files``, where every client reads its own file, is no split at all: see
:mod:`foedus.data.shares`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset
from foedus.data.stratified import distinct

SCHEMES = ("column", "dirichlet", "iid", "quantity")


def iid_partition(labels: np.ndarray, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and deal rows out evenly."""
    _check(len(labels), num_clients)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0, min_size: int = 2,
    max_tries: int = 20,
) -> list[np.ndarray]:
    """For each class, split its rows among clients in Dirichlet(alpha) proportions.

    Redraws (up to ``max_tries`` times) until every client holds at least ``min_size`` rows,
    so no client is empty. With many clients a draw that leaves none short may be very rare
    (10,000 clients: every draw of the 1,000 once allowed failed, after 54 s), so after the
    last draw the clients still short take random rows from the largest ones: the result always
    exists when the rows suffice, and comes in a bounded time.
    """
    _check(len(labels), num_clients)
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be positive, got {alpha}")
    if num_clients * min_size > len(labels):
        raise ConfigError(
            f"{len(labels)} rows cannot give {num_clients} clients {min_size} rows each"
        )
    rng = np.random.default_rng(seed)
    classes = distinct(labels)
    parts: list[np.ndarray] = []
    for _ in range(max(1, max_tries)):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(labels == c))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(rows)).astype(int)
            for client, part in enumerate(np.split(rows, cuts)):
                shares[client].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shares]
        if min(len(p) for p in parts) >= min_size:
            return parts
    return _top_up(parts, min_size, rng)


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator,
            ) -> list[np.ndarray]:
    """Move random rows from the largest clients to those with fewer than ``min_size``."""
    parts = list(parts)
    sizes = np.array([len(p) for p in parts])
    for short in np.flatnonzero(sizes < min_size):
        while sizes[short] < min_size:
            rich = int(np.argmax(sizes))
            take = min(min_size - int(sizes[short]), int(sizes[rich]) - min_size)
            chosen = rng.choice(len(parts[rich]), size=take, replace=False)
            parts[short] = np.sort(np.concatenate([parts[short], parts[rich][chosen]]))
            parts[rich] = np.delete(parts[rich], chosen)
            sizes[short], sizes[rich] = len(parts[short]), len(parts[rich])
    return parts


def quantity_partition(
    num_rows: int, num_clients: int, alpha: float, seed: int = 0, min_size: int = 2
) -> list[np.ndarray]:
    """Give clients Dirichlet(alpha)-proportioned amounts of shuffled rows, each ``min_size``+.

    Every client first gets ``min_size`` rows; the rest are dealt by one multinomial draw with
    Dirichlet(alpha) probabilities, so no redraws are needed and the guarantee is exact. Rows
    are shuffled before cutting, so each client's labels follow the global distribution.
    """
    _check(num_rows, num_clients)
    if alpha <= 0:
        raise ConfigError(f"quantity alpha must be positive, got {alpha}")
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1, got {min_size}")
    if num_clients * min_size > num_rows:
        raise ConfigError(f"{num_rows} rows cannot give {num_clients} clients {min_size} rows each")
    rng = np.random.default_rng(seed)
    proportions = rng.dirichlet(np.full(num_clients, alpha))
    sizes = min_size + rng.multinomial(num_rows - num_clients * min_size, proportions)
    order = rng.permutation(num_rows)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def column_partition(values: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """One client per distinct value of ``values``, in sorted order of the values.

    The number of distinct values must equal ``num_clients``: silently merging or leaving out
    sites would make the federation something other than the organisations it names.
    """
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    distinct, inverse = np.unique(values, return_inverse=True)
    if len(distinct) != num_clients:
        raise ConfigError(
            f"the partition column has {len(distinct)} distinct values but clients.count is "
            f"{num_clients}; they must be equal (one client per value)"
        )
    return [np.flatnonzero(inverse == i) for i in range(num_clients)]


def column_index(column: int | str, feature_names: Sequence[str] = ()) -> int:
    """Resolve ``column`` (an index, or a name from ``feature_names``) to a feature index."""
    if isinstance(column, bool) or not isinstance(column, int | str):
        raise ConfigError(f"column: expected a feature index or name, got {column!r}")
    if isinstance(column, str):
        if column not in feature_names:
            known = ", ".join(feature_names) if feature_names else "none (name it by index)"
            raise ConfigError(f"column: no feature named {column!r}; features: {known}")
        return list(feature_names).index(column)
    return column


def drop_column(data: Dataset, index: int) -> Dataset:
    """``data`` without feature ``index``."""
    return Dataset(np.delete(data.x, index, axis=1), data.y)


def partition(
    data: Dataset, num_clients: int, *, scheme: str = "dirichlet", alpha: float = 0.5,
    seed: int = 0, min_size: int = 2, column: int | str | None = None,
    feature_names: Sequence[str] = (), keep_column: bool = False,
) -> list[Dataset]:
    """Split ``data`` into ``num_clients`` datasets by ``scheme`` (see :data:`SCHEMES`).

    ``alpha`` and ``min_size`` apply to ``dirichlet`` and ``quantity``; ``column`` (an index,
    or a name from ``feature_names``) and ``keep_column`` to ``column``. With ``column`` the
    returned shares lack that feature unless ``keep_column`` is true; drop it from the test set
    too (:func:`drop_column`) so the server's model sees the same features.
    """
    if scheme == "iid":
        parts = iid_partition(data.y, num_clients, seed)
    elif scheme == "dirichlet":
        parts = dirichlet_partition(data.y, num_clients, alpha, seed, min_size=min_size)
    elif scheme == "quantity":
        parts = quantity_partition(len(data), num_clients, alpha, seed, min_size=min_size)
    elif scheme == "column":
        if column is None:
            raise ConfigError("partition 'column' needs a column (a feature index or name)")
        index = column_index(column, feature_names)
        if not -data.x.shape[1] <= index < data.x.shape[1]:
            raise ConfigError(
                f"column: index {index} is out of range for {data.x.shape[1]} features"
            )
        parts = column_partition(data.x[:, index], num_clients)
        shares = [data.subset(p) for p in parts]
        return shares if keep_column else [drop_column(s, index) for s in shares]
    else:
        hint = " ('files' is for job files: each client reads its own file)" * (
            scheme == "files")
        raise ConfigError(
            f"unknown partition scheme {scheme!r}; allowed: {', '.join(SCHEMES)}{hint}"
        )
    return [data.subset(p) for p in parts]


def _check(rows: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > rows:
        raise ConfigError(f"cannot split {rows} rows among {num_clients} clients")
