"""Robust aggregators: hand-computed references, slow by-the-definition references, and the
bounded influence of Byzantine clients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from foedus.aggregate.fedavg import FedAvg
from foedus.aggregate.robust import Bulyan, GeoMedian, Krum, Median, MultiKrum, TrimmedMean
from foedus.core.errors import ConfigError, RejectedUpdate
from tests.aggregate.support import ROBUST, make, vectors


def column(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]


# ---- hand-computed references ---------------------------------------------------------------
# Points 0, 1, 3, 4.5, 100 with f = 1: each point's score is the sum of squared distances to
# its n - f - 2 = 2 nearest others: 0 -> 1 + 9 = 10, 1 -> 1 + 4 = 5, 3 -> 4 + 2.25 = 6.25,
# 4.5 -> 2.25 + 12.25 = 14.5, 100 -> 95.5^2 + 97^2.
KRUM_POINTS = column(0, 1, 3, 4.5, 100)


def test_krum_picks_the_point_with_the_closest_neighbourhood() -> None:
    assert vectors(Krum(f=1), KRUM_POINTS)[0] == pytest.approx(1.0)


def test_multi_krum_averages_the_m_best_scores() -> None:
    assert vectors(MultiKrum(f=1, m=3), KRUM_POINTS)[0] == pytest.approx((1 + 3 + 0) / 3)
    # default m = n - f = 4: everything but the outlier
    assert vectors(MultiKrum(f=1), KRUM_POINTS)[0] == pytest.approx((1 + 3 + 0 + 4.5) / 4)


def test_weighted_multi_krum_weights_the_chosen_by_their_example_counts() -> None:
    # Chosen by score (m = 3): 1 (10 examples), 3 (30) and 0 (20); the outlier's 1,000
    # examples buy it nothing: (10 * 1 + 30 * 3 + 20 * 0) / 60 = 100 / 60.
    counts = [20, 10, 30, 40, 1000]
    weighted = MultiKrum(f=1, m=3, weighted=True)
    assert vectors(weighted, KRUM_POINTS, counts)[0] == pytest.approx(100 / 60)
    # the default ignores the counts
    assert vectors(MultiKrum(f=1, m=3), KRUM_POINTS, counts)[0] == pytest.approx(4 / 3)


def test_median_takes_the_middle_value_or_the_mean_of_the_middle_two() -> None:
    np.testing.assert_allclose(vectors(Median(), np.array([[3.0, -1], [1, 7], [2, 5]])), [2, 5])
    np.testing.assert_allclose(
        vectors(Median(), np.array([[1.0, 0], [5, 0], [2, 1], [100, 1]])), [3.5, 0.5])


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    # beta = 0.2 of 5 -> drop 1 value at each end, per coordinate
    rows = np.array([[0.0, 10], [1, -50], [3, 11], [4.5, 12], [100, 13]])
    np.testing.assert_allclose(vectors(TrimmedMean(beta=0.2), rows),
                               [(1 + 3 + 4.5) / 3, (10 + 11 + 12) / 3])
    # beta too small to trim anything with 4 clients: the plain mean
    np.testing.assert_allclose(vectors(TrimmedMean(beta=0.2), rows[:4]),
                               rows[:4].mean(axis=0))


def test_geomedian_of_an_equilateral_triangle_is_its_centre() -> None:
    angles = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    rows = np.stack([np.cos(angles), np.sin(angles)], axis=1) + np.array([5.0, -3.0])
    np.testing.assert_allclose(vectors(GeoMedian(), rows), [5.0, -3.0], atol=1e-6)


def test_geomedian_of_points_on_a_line_is_their_median() -> None:
    assert vectors(GeoMedian(ftol=1e-12, max_iter=1000), column(0, 1, 10))[0] == \
        pytest.approx(1.0, abs=1e-4)


def test_geomedian_weights_clients_by_example_count_unless_told_not_to() -> None:
    # weights 1, 1, 3 on 0, 1, 10: the weighted median is 10 (3 > half of 5)
    rows = column(0, 1, 10)
    strict = {"ftol": 1e-12, "max_iter": 1000}
    assert vectors(GeoMedian(**strict), rows, [1, 1, 3])[0] == pytest.approx(10.0, abs=1e-4)
    assert vectors(GeoMedian(weighted=False, **strict), rows, [1, 1, 3])[0] == \
        pytest.approx(1.0, abs=1e-4)


def test_bulyan_selects_by_repeated_krum_then_averages_around_the_median() -> None:
    # honest 0, 1, 2, 3, 6 and attackers 40, -70, f = 1: theta = 5 picks 2, 3, 1, then 0 and 6
    # (0 and 6 tie at one neighbour; 0 is closer to everyone); beta = 3 values closest to the
    # median 2 are 1, 2, 3
    assert vectors(Bulyan(f=1), column(0, 1, 2, 3, 6, 40, -70))[0] == pytest.approx(2.0)


# ---- slow references written straight from the papers' definitions -------------------------
def krum_scores_by_definition(rows: np.ndarray, f: int) -> list[float]:
    scores = []
    for i, x in enumerate(rows):
        dists = sorted(float(np.sum((x - y) ** 2)) for j, y in enumerate(rows) if j != i)
        scores.append(sum(dists[: max(len(rows) - f - 2, 1)]))
    return scores


def bulyan_by_definition(rows: np.ndarray, f: int) -> np.ndarray:
    remaining = list(range(len(rows)))
    chosen = []
    for _ in range(len(rows) - 2 * f):
        candidates = rows[remaining]
        scores = krum_scores_by_definition(candidates, f)
        # ties (certain once a single neighbour counts) go to the candidate closest to all
        totals = [float(np.sum((candidates - x) ** 2)) for x in candidates]
        best = min(range(len(remaining)), key=lambda i: (scores[i], totals[i]))
        chosen.append(remaining.pop(best))
    selected = rows[chosen]
    beta = len(selected) - 2 * f
    out = []
    for column_values in selected.T:
        med = np.median(column_values)
        out.append(np.mean(sorted(column_values, key=lambda v: abs(v - med))[:beta]))
    return np.array(out)


def trimmed_mean_by_definition(rows: np.ndarray, beta: float) -> np.ndarray:
    k = int(np.floor(beta * len(rows)))
    return np.array([np.mean(sorted(c)[k: len(c) - k]) for c in rows.T])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("f", [0, 1, 2])
def test_krum_matches_the_definition(seed: int, f: int) -> None:
    rows = np.random.default_rng(seed).normal(size=(2 * f + 3 + seed, 4))
    best = int(np.argmin(krum_scores_by_definition(rows, f)))
    np.testing.assert_allclose(vectors(Krum(f=f), rows), rows[best], rtol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_multi_krum_matches_the_definition(seed: int) -> None:
    rows = np.random.default_rng(seed).normal(size=(8, 3))
    best = np.argsort(krum_scores_by_definition(rows, 2))[:5]
    np.testing.assert_allclose(vectors(MultiKrum(f=2, m=5), rows), rows[best].mean(axis=0),
                               rtol=1e-9)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("f", [1, 2])
def test_bulyan_matches_the_definition(seed: int, f: int) -> None:
    rows = np.random.default_rng(seed).normal(size=(4 * f + 3 + seed % 3, 5))
    np.testing.assert_allclose(vectors(Bulyan(f=f), rows), bulyan_by_definition(rows, f),
                               rtol=1e-9)


def test_bulyan_works_through_many_column_blocks() -> None:
    rows = np.random.default_rng(7).normal(size=(7, 50))
    agg = Bulyan(f=1)
    agg.block = 8  # force several blocks, including a ragged last one
    np.testing.assert_allclose(vectors(agg, rows), bulyan_by_definition(rows, 1), rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 4)),
                       elements=st.floats(-1e3, 1e3, allow_nan=False)),
       beta=st.floats(0.0, 0.49))
def test_trimmed_mean_matches_the_definition(rows: np.ndarray, beta: float) -> None:
    np.testing.assert_allclose(vectors(TrimmedMean(beta=beta), rows),
                               trimmed_mean_by_definition(rows, beta), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 4)),
                       elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_median_matches_numpy(rows: np.ndarray) -> None:
    np.testing.assert_allclose(vectors(Median(), rows), np.median(rows, axis=0), rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(2, 8), st.integers(1, 3)),
                       elements=st.floats(-100, 100, allow_nan=False)))
def test_geomedian_is_no_worse_than_any_client_or_the_mean(rows: np.ndarray) -> None:
    """The geometric median minimises the sum of distances: check against candidates."""
    def cost(z: np.ndarray) -> float:
        return float(np.linalg.norm(rows - z, axis=1).sum())

    z = vectors(GeoMedian(weighted=False, max_iter=500, ftol=1e-12), rows)
    for candidate in [*rows, rows.mean(axis=0)]:
        assert cost(z) <= cost(candidate) + 1e-6 * (1 + cost(candidate))


# ---- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "f", "needed"), [
    ("krum", 1, 5), ("krum", 2, 7), ("multi-krum", 2, 7), ("bulyan", 1, 7), ("bulyan", 2, 11),
])
def test_too_few_updates_for_f_is_a_reasoned_rejection(name: str, f: int, needed: int) -> None:
    agg = make(name, f=f)
    assert agg.min_updates() == needed
    rows = np.random.default_rng(0).normal(size=(needed - 1, 2))
    with pytest.raises(RejectedUpdate, match=f"too_few_updates: .*f={f}.* needs at least "
                                             f"{needed} updates, got {needed - 1}"):
        vectors(agg, rows)
    vectors(make(name, f=f), np.random.default_rng(0).normal(size=(needed, 2)))  # enough


def test_multi_krum_needs_m_plus_f_updates() -> None:
    agg = MultiKrum(f=1, m=6)
    assert agg.min_updates() == 7
    with pytest.raises(RejectedUpdate, match="too_few_updates"):
        vectors(agg, np.ones((6, 2)))


@pytest.mark.parametrize(("factory", "message"), [
    (lambda: Krum(f=-1), "f: expected an integer >= 0, got -1"),
    (lambda: Krum(f=1.5), "f: expected an integer >= 0, got 1.5"),
    (lambda: MultiKrum(m=0), "m: expected an integer >= 1, got 0"),
    (lambda: MultiKrum(weighted=1), "weighted: expected true or false, got 1"),
    (lambda: TrimmedMean(beta=0.5), r"beta: expected a number in \[0.0, 0.5\), got 0.5"),
    (lambda: Bulyan(f=True), "f: expected an integer >= 0, got True"),
    (lambda: GeoMedian(nu=0), "nu: expected a positive number, got 0"),
    (lambda: GeoMedian(max_iter=0), "max_iter: expected an integer >= 1, got 0"),
    (lambda: GeoMedian(weighted="yes"), "weighted: expected true or false"),
])
def test_invalid_settings_are_refused_naming_the_parameter(factory: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        factory()  # type: ignore[operator]


# ---- Byzantine influence --------------------------------------------------------------------
BYZANTINE_SETTINGS = {"krum": {"f": 2}, "multi-krum": {"f": 2}, "median": {},
                      "trimmed-mean": {"beta": 0.2}, "geomedian": {}, "bulyan": {"f": 2}}


@pytest.mark.parametrize("attack", ["scaled_flip", "noise", "same_point"])
@pytest.mark.parametrize("name", ROBUST)
def test_f_byzantine_clients_cannot_drag_a_robust_result_away(name: str, attack: str) -> None:
    rng = np.random.default_rng(3)
    n_honest, n_bad, d = 9 if name == "bulyan" else 8, 2, 20
    honest_centre = rng.normal(size=d)
    honest = honest_centre + 0.1 * rng.normal(size=(n_honest, d))
    if attack == "scaled_flip":
        bad = -1e4 * honest[:n_bad]
    elif attack == "noise":
        bad = 1e4 * rng.normal(size=(n_bad, d))
    else:  # colluding attackers agree on one far point
        bad = np.tile(honest_centre + 1e4, (n_bad, 1))
    rows = np.concatenate([honest, bad])
    weights = [10] * len(rows)

    robust = vectors(make(name, **BYZANTINE_SETTINGS[name]), rows, weights)
    plain = vectors(FedAvg(), rows, weights)
    honest_mean = honest.mean(axis=0)
    spread = np.linalg.norm(honest - honest_mean, axis=1).max()
    assert np.linalg.norm(robust - honest_mean) <= spread  # stays among the honest clients
    assert np.linalg.norm(plain - honest_mean) > 100 * spread  # while FedAvg is dragged away


def test_krum_never_picks_an_attacker_whatever_their_position_in_the_round() -> None:
    rng = np.random.default_rng(4)
    honest = rng.normal(size=(7, 3))
    bad = 50 + rng.normal(size=(2, 3))
    for order in itertools.islice(itertools.permutations(range(9)), 0, 200, 17):
        rows = np.concatenate([honest, bad])[list(order)]
        picked = vectors(Krum(f=2), rows)
        assert any(np.allclose(picked, h) for h in honest)
