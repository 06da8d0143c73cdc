"""Properties every aggregator in the catalogue shares, checked for each one by name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from foedus.aggregate.base import aggregators
from foedus.core.errors import ConfigError, RejectedUpdate
from tests.aggregate.support import ROBUST, SETTINGS, make, refusal, run_round, upd, vectors

ALL = sorted(SETTINGS)
ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")  # normalised steps, not the mean: test_fedopt
#: aggregators whose updates are not parameters to average (trees, split histograms), with
#: whether they stream: the contract checks below that fit them; their rules in test_trees and
#: test_histforest
SPECIAL: dict[str, bool] = {"tree-bagging": False, "forest-histograms": True}
EVERY = sorted([*ALL, *SPECIAL])


def test_this_catalogue_covers_exactly_the_registered_aggregators() -> None:
    """A new aggregator gets no pass: registering it without adding it here fails."""
    assert set(EVERY) == set(aggregators.names())


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_each_special_aggregator_says_whether_it_streams(name: str) -> None:
    assert aggregators.create(name).streaming is SPECIAL[name]


@pytest.mark.parametrize("name", ALL)
def test_each_says_whether_it_streams(name: str) -> None:
    assert make(name).streaming is (name not in ROBUST)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("params", "n", "reason"), [
    ({"w": np.ones(4, np.float32)}, 1, "wrong_shape"),
    ({"v": np.ones(3, np.float32)}, 1, "wrong_names"),
    ({"w": np.array([1.0, np.nan, 0.0], np.float32)}, 1, "not_finite"),
    ({"w": np.array([1.0, -np.inf, 0.0], np.float32)}, 1, "not_finite"),
    ({"w": np.ones(3, np.float32)}, 0, "no_examples"),
])
def test_each_rejects_a_broken_update_with_a_reason_and_keeps_nothing_of_it(
    name: str, params: dict[str, np.ndarray], n: int, reason: str
) -> None:
    agg = make(name, **({"f": 0} if "f" in SETTINGS[name] else {}))
    agg.reset({"w": np.zeros(3, np.float32)})
    assert refusal(agg, upd("bad", n, **params)).reason == reason
    assert agg.accepted == 0
    # the rejected update left no trace: the round's result is that of the valid ones alone
    good = [np.full(3, v, np.float32) for v in (1.0, 2.0, 4.0)]
    for i, g in enumerate(good):
        agg.accept(upd(f"c{i}", 1, w=g))
    clean = make(name, **({"f": 0} if "f" in SETTINGS[name] else {}))
    np.testing.assert_allclose(
        agg.result()["w"], run_round(clean, {"w": np.zeros(3, np.float32)},
                                     [{"w": g} for g in good])["w"], rtol=1e-6)


def test_a_nan_deep_inside_a_large_tensor_is_found() -> None:
    agg = make("fedavg")
    agg.reset({"w": np.zeros(300_000, np.float32)})
    bad = np.zeros(300_000, np.float32)
    bad[-1] = np.nan
    assert refusal(agg, upd("a", 1, w=bad)).reason == "not_finite"


@pytest.mark.parametrize("name", ALL)
def test_an_empty_round_has_no_result(name: str) -> None:
    agg = make(name)
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate, match="no_updates"):
        agg.result()


@pytest.mark.parametrize("name", EVERY)
def test_using_an_aggregator_before_reset_is_a_clear_error(name: str) -> None:
    agg = make(name) if name in SETTINGS else aggregators.create(name)
    with pytest.raises(ConfigError, match="reset"):
        agg.accept(upd("a", 1, w=np.ones(3)))


@pytest.mark.parametrize("name", EVERY)
def test_an_unknown_parameter_is_refused_listing_the_allowed_ones(name: str) -> None:
    with pytest.raises(ConfigError, match="has no parameter 'lr'; allowed"):
        aggregators.create(name, lr=0.1)


@pytest.mark.parametrize("name", [n for n in ALL if n not in ADAPTIVE])
def test_n_identical_updates_return_that_update(name: str) -> None:
    target = {"w": np.array([[1.5, -2.0], [0.25, 8.0]], np.float32),
              "b": np.array([3.0], np.float32)}
    start = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(1, np.float32)}
    out = run_round(make(name), start, [target] * 7, weights=[1, 2, 3, 1, 5, 2, 9])
    for key, value in target.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-6)
        assert out[key].dtype == value.dtype and out[key].shape == value.shape


@pytest.mark.parametrize("name", ALL)
def test_the_result_keeps_each_parameters_dtype_and_shape(name: str) -> None:
    rng = np.random.default_rng(0)
    start = {"a": np.zeros((3, 2), np.float32), "b": np.zeros(4, np.float64)}
    updates = [{"a": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4)}
               for _ in range(7)]
    out = run_round(make(name), start, updates)
    assert [(k, v.dtype, v.shape) for k, v in out.items()] == [
        ("a", np.dtype(np.float32), (3, 2)), ("b", np.dtype(np.float64), (4,))]


@pytest.mark.parametrize("name", ALL)
def test_the_callers_arrays_are_never_modified(name: str) -> None:
    rng = np.random.default_rng(1)
    rows = [rng.normal(size=5).astype(np.float32) for _ in range(7)]
    copies = [r.copy() for r in rows]
    run_round(make(name), {"w": np.zeros(5, np.float32)}, [{"w": r} for r in rows])
    for row, copy in zip(rows, copies, strict=True):
        np.testing.assert_array_equal(row, copy)


@pytest.mark.parametrize("name", ALL)
def test_an_aggregator_is_reusable_round_after_round(name: str) -> None:
    agg = make(name)
    rng = np.random.default_rng(2)
    params = {"w": np.zeros(4, np.float32)}
    for _ in range(3):
        params = run_round(agg, params, [{"w": rng.normal(size=4).astype(np.float32)}
                                         for _ in range(7)])
        assert np.isfinite(params["w"]).all()


# ---- permutation invariance: the order in which clients report never matters ---------------
ORDER_FREE = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "median",
              "trimmed-mean", "geomedian"]


@settings(max_examples=25, deadline=None)
@given(
    rows=hnp.arrays(np.float64, st.tuples(st.integers(3, 9), st.integers(1, 4)),
                    elements=st.floats(-1e3, 1e3, allow_nan=False)),
    data=st.data(),
)
@pytest.mark.parametrize("name", ORDER_FREE)
def test_permuting_the_clients_does_not_change_the_result(
    name: str, rows: np.ndarray, data: st.DataObject
) -> None:
    weights = data.draw(st.lists(st.integers(1, 50), min_size=len(rows), max_size=len(rows)))
    order = data.draw(st.permutations(range(len(rows))))
    a = vectors(make(name), rows, weights)
    b = vectors(make(name), rows[list(order)], [weights[i] for i in order])
    # GeoMedian iterates to a relative tolerance: rounding may stop it a hair apart
    tol = 1e-6 if name == "geomedian" else 1e-9
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * (1 + np.abs(rows).max()))


KRUM_BASED = ("krum", "multi-krum", "bulyan")


@pytest.mark.parametrize("name", KRUM_BASED)
@pytest.mark.parametrize("seed", range(5))
def test_permuting_the_clients_does_not_change_krum_based_results(name: str, seed: int) -> None:
    # continuous random data: Krum-based choices are order-free except on exact ties of both
    # the Krum score and the total distance, which continuous data never produces
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(9, 6))
    order = rng.permutation(9)
    np.testing.assert_allclose(vectors(make(name), rows), vectors(make(name), rows[order]),
                               rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(7, 9), st.integers(1, 3)),
                       elements=st.floats(-1e3, 1e3, allow_nan=False)),
       shift=st.floats(-1e3, 1e3))
@pytest.mark.parametrize("name", ROBUST)
def test_robust_results_move_with_the_clients(name: str, rows: np.ndarray, shift: float) -> None:
    """Translation equivariance: shifting every update (and the global model) by the same
    vector shifts the result by it."""
    if name in KRUM_BASED:
        # on an exact tie of Krum scores (repeated values make them: 0, 0.05 and 2, 2.05 are
        # the same distance apart) the choice turns on the rounding of the distances, which a
        # shift changes, and so does the result: continuous noise breaks such ties
        rows = rows + np.random.default_rng(0).normal(scale=1e-3, size=rows.shape)
    origin = np.linspace(-1, 1, rows.shape[1])
    a = vectors(make(name), rows, origin=origin)
    b = vectors(make(name), rows + shift, origin=origin + shift)
    np.testing.assert_allclose(b, a + shift, rtol=1e-6, atol=1e-6 * (1 + abs(shift)))


@settings(max_examples=25, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(7, 9), st.integers(1, 3)),
                       elements=st.floats(-1e3, 1e3, allow_nan=False)))
@pytest.mark.parametrize("name", ROBUST)
def test_robust_results_stay_inside_the_clients_range(name: str, rows: np.ndarray) -> None:
    out = vectors(make(name), rows)
    assert (out >= rows.min(axis=0) - 1e-6).all() and (out <= rows.max(axis=0) + 1e-6).all()


def test_asking_for_fedprox_says_where_it_lives() -> None:
    with pytest.raises(ConfigError, match=r"unknown aggregator 'fedprox' \(FedProx is not an "
                                          r"aggregator but the clients' proximal term: set the "
                                          r"model's mu"):
        aggregators.get("fedprox")
