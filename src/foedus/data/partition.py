"""Splitting one dataset into clients' shares: IID, or label-skewed with a Dirichlet prior.

Both are deterministic under a seed, so a run and its re-run give every client the same rows.
Dirichlet(alpha) label skew (Hsu et al., 2019) is the standard non-IID benchmark: small alpha
gives each client few classes, large alpha approaches IID.
"""

from __future__ import annotations

import numpy as np

from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset


def iid_partition(labels: np.ndarray, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and deal rows out evenly."""
    _check(len(labels), num_clients)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0, min_size: int = 2,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """For each class, split its rows among clients in Dirichlet(alpha) proportions.

    Redraws until every client holds at least ``min_size`` rows, so no client is empty.
    """
    _check(len(labels), num_clients)
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be positive, got {alpha}")
    if num_clients * min_size > len(labels):
        raise ConfigError(
            f"{len(labels)} rows cannot give {num_clients} clients {min_size} rows each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
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
    raise ConfigError(
        f"could not give every client {min_size} rows with alpha={alpha} after {max_tries} "
        "draws; raise alpha or use fewer clients"
    )


def partition(
    data: Dataset, num_clients: int, *, scheme: str = "dirichlet", alpha: float = 0.5,
    seed: int = 0,
) -> list[Dataset]:
    """Split ``data`` into ``num_clients`` datasets by ``scheme`` ("iid" or "dirichlet")."""
    if scheme == "iid":
        parts = iid_partition(data.y, num_clients, seed)
    elif scheme == "dirichlet":
        parts = dirichlet_partition(data.y, num_clients, alpha, seed)
    else:
        raise ConfigError(f"unknown partition scheme {scheme!r}; allowed: dirichlet, iid")
    return [data.subset(p) for p in parts]


def _check(rows: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > rows:
        raise ConfigError(f"cannot split {rows} rows among {num_clients} clients")
