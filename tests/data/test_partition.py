"""Partitions are deterministic, complete, disjoint, and Dirichlet really skews labels."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.errors import ConfigError
from foedus.data.datasets import load_dataset
from foedus.data.partition import dirichlet_partition, iid_partition, partition

LABELS = np.repeat(np.arange(10), 50)


@pytest.mark.parametrize("split", [
    lambda seed: iid_partition(LABELS, 7, seed),
    lambda seed: dirichlet_partition(LABELS, 7, 0.5, seed),
])
def test_partitions_are_deterministic_disjoint_and_complete(split) -> None:  # type: ignore[no-untyped-def]
    a, b, c = split(3), split(3), split(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    joined = np.concatenate(a)
    assert sorted(joined.tolist()) == list(range(len(LABELS)))


def test_small_alpha_skews_labels_and_large_alpha_approaches_iid() -> None:
    def mean_classes(alpha: float) -> float:
        parts = dirichlet_partition(LABELS, 10, alpha, seed=0)
        return float(np.mean([len(np.unique(LABELS[p])) for p in parts]))

    assert mean_classes(0.1) < 5 < mean_classes(100.0)


def test_every_client_gets_at_least_min_size_rows() -> None:
    parts = dirichlet_partition(LABELS, 20, 0.1, seed=1, min_size=5)
    assert min(len(p) for p in parts) >= 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_clients": 0}, "at least 1"),
    ({"num_clients": 10_000}, "cannot split"),
    ({"num_clients": 3, "alpha": 0}, "alpha must be positive"),
])
def test_bad_settings_raise_a_clear_error(kwargs: dict, message: str) -> None:
    args = {"alpha": 0.5} | kwargs
    with pytest.raises(ConfigError, match=message):
        dirichlet_partition(LABELS, args["num_clients"], args["alpha"])


def test_partition_of_a_dataset_and_unknown_scheme() -> None:
    train, test, spec = load_dataset("digits")
    shares = partition(train, 4, scheme="iid")
    assert sum(len(s) for s in shares) == len(train)
    assert spec.n_features == 64 and spec.classes == tuple(range(10))
    assert len(test) > 0
    with pytest.raises(ConfigError, match="allowed: dirichlet, iid"):
        partition(train, 4, scheme="shards")
