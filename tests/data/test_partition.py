"""Partitions are deterministic, complete, disjoint; Dirichlet skews labels, quantity skews
sizes only, and a column split gives one client per value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset, load_dataset
from foedus.data.partition import (
    column_partition,
    dirichlet_partition,
    iid_partition,
    partition,
    quantity_partition,
)

LABELS = np.repeat(np.arange(10), 50)


@pytest.mark.parametrize("split", [
    lambda seed: iid_partition(LABELS, 7, seed),
    lambda seed: dirichlet_partition(LABELS, 7, 0.5, seed),
    lambda seed: quantity_partition(len(LABELS), 7, 0.5, seed),
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
def test_bad_settings_raise_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    args = {"alpha": 0.5} | kwargs
    with pytest.raises(ConfigError, match=message):
        dirichlet_partition(LABELS, args["num_clients"], args["alpha"])


def test_partition_of_a_dataset_and_unknown_scheme() -> None:
    train, test, spec = load_dataset("digits")
    shares = partition(train, 4, scheme="iid")
    assert sum(len(s) for s in shares) == len(train)
    assert spec.n_features == 64 and spec.classes == tuple(range(10))
    assert len(test) > 0
    with pytest.raises(ConfigError, match="allowed: column, dirichlet, iid, quantity"):
        partition(train, 4, scheme="shards")
    with pytest.raises(ConfigError, match="'files' is for job files"):
        partition(train, 4, scheme="files")


# ---- quantity skew ----------------------------------------------------------------------------
def test_quantity_skew_sizes_vary_with_alpha_and_respect_min_size() -> None:
    def size_spread(alpha: float) -> float:
        sizes = [len(p) for p in quantity_partition(len(LABELS), 10, alpha, seed=0, min_size=5)]
        assert min(sizes) >= 5 and sum(sizes) == len(LABELS)
        return float(np.std(sizes) / np.mean(sizes))

    assert size_spread(0.2) > 3 * size_spread(100.0)


def test_quantity_skew_keeps_each_clients_labels_close_to_the_global_mix() -> None:
    labels = np.random.default_rng(0).integers(0, 4, 20_000)
    global_mix = np.bincount(labels, minlength=4) / len(labels)
    for part in quantity_partition(len(labels), 5, 1.0, seed=2, min_size=1000):
        mix = np.bincount(labels[part], minlength=4) / len(part)
        assert np.abs(mix - global_mix).max() < 0.05


def test_quantity_skew_refuses_impossible_minimum_and_bad_alpha() -> None:
    with pytest.raises(ConfigError, match="cannot give 10 clients 60 rows"):
        quantity_partition(len(LABELS), 10, 0.5, min_size=60)
    with pytest.raises(ConfigError, match="alpha must be positive"):
        quantity_partition(len(LABELS), 10, 0.0)
    with pytest.raises(ConfigError, match="min_size must be at least 1"):
        quantity_partition(len(LABELS), 10, 0.5, min_size=0)


# ---- by a column ------------------------------------------------------------------------------
SITES = np.array([3.0, 1.0, 2.0, 1.0, 3.0, 3.0, 2.0, 1.0, 1.0])


def _site_data() -> Dataset:
    x = np.column_stack([np.arange(len(SITES)), SITES, -np.arange(len(SITES))]).astype(np.float32)
    return Dataset(x, np.arange(len(SITES)) % 2)


def test_column_partition_gives_one_client_per_value_in_sorted_order() -> None:
    parts = column_partition(SITES, 3)
    assert [sorted(set(SITES[p])) for p in parts] == [[1.0], [2.0], [3.0]]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(SITES)))


def test_column_partition_count_must_match_clients_and_names_both_numbers() -> None:
    with pytest.raises(ConfigError, match=r"3 distinct values but clients\.count is 4"):
        column_partition(SITES, 4)


def test_column_scheme_drops_the_column_unless_kept_and_accepts_a_name() -> None:
    data = _site_data()
    dropped = partition(data, 3, scheme="column", column=1)
    assert all(s.x.shape[1] == 2 for s in dropped)
    assert dropped[0].x[:, 0].tolist() == [1, 3, 7, 8]  # site 1's rows, row ids kept
    kept = partition(data, 3, scheme="column", column="site", feature_names=("id", "site", "neg"),
                     keep_column=True)
    assert [np.unique(s.x[:, 1]).tolist() for s in kept] == [[1.0], [2.0], [3.0]]


@pytest.mark.parametrize(("column", "names", "message"), [
    (None, (), "needs a column"),
    ("hospital", ("id", "site", "neg"), "no feature named 'hospital'"),
    ("site", (), "name it by index"),
    (7, (), "out of range for 3 features"),
])
def test_column_scheme_errors(column: int | str | None, names: tuple[str, ...],
                              message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        partition(_site_data(), 3, scheme="column", column=column, feature_names=names)


def test_dirichlet_gives_every_client_its_minimum_even_when_no_draw_does() -> None:
    # 300 clients, 700 rows, strong skew: a draw leaving nobody short practically never comes
    labels = np.random.default_rng(1).integers(0, 10, size=700)
    parts = dirichlet_partition(labels, 300, alpha=0.1, min_size=2, max_tries=3)
    assert min(len(p) for p in parts) >= 2
    together = np.concatenate(parts)
    assert len(together) == 700 and len(np.unique(together)) == 700  # a split: no row lost
