"""``forest-histograms``: sums clients' histograms, refuses bad ones, and grows the forest.

The end-to-end test runs a real job (digits, 10 IID clients, in-process transport) and compares
it with scikit-learn's RandomForestClassifier of the same size on the union of the clients'
training rows and the job's own test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from foedus.aggregate.base import aggregators
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.data.partition import partition
from foedus.runner import JobResult, run_job_sync
from foedus.trees.histforest.adapter import FederatedForestAdapter
from foedus.trees.histforest.aggregator import ForestHistograms
from foedus.trees.histforest.format import Settings
from foedus.trees.histforest.splits import best_splits

Params = dict[str, np.ndarray]


def settings(**changes: int) -> Settings:
    """Forest settings for split tests: a classifier on 3 features unless told otherwise."""
    base = {"n_features": 3, "n_classes": 2, "n_trees": 1, "max_depth": -1,
            "min_samples_leaf": 1, "max_features": 3, "n_candidates": 3, "max_bins": 4,
            "bootstrap": 0, "seed": 0, "regression": 0}
    return Settings(**{**base, **changes})


def update(params: Params, sender: str = "c0", examples: int = 10) -> Message:
    return Message.create(Kind.UPDATE, job_id="t", round=1, sender=sender, params=params,
                          num_examples=examples)


def client_updates(spec: DataSpec, shares: list[Dataset], params: Params,
                   **options: Any) -> list[Message]:
    out = []
    for i, share in enumerate(shares):
        client = FederatedForestAdapter(spec, **options)
        client.set_params(params)
        client.fit(share)
        out.append(update(client.get_params(), f"c{i}", len(share)))
    return out


def one_round(params: Params, updates: list[Message]) -> Params:
    aggregator = ForestHistograms()
    aggregator.reset(params)
    for u in updates:
        aggregator.accept(u)
    return aggregator.result()


@pytest.fixture(scope="module")
def digits_shares() -> tuple[DataSpec, list[Dataset]]:
    train, _, spec = load_dataset("digits")
    return spec, partition(train, 5, scheme="iid", seed=0)


@pytest.fixture(scope="module")
def growing(digits_shares: Any) -> tuple[Params, list[Message]]:
    """A forest after its bin edges are set, and the clients' histograms of the roots."""
    spec, shares = digits_shares
    start = FederatedForestAdapter(spec, n_estimators=3).get_params()
    params = one_round(start, client_updates(spec, shares, start, n_estimators=3))
    return params, client_updates(spec, shares, params, n_estimators=3)


def test_it_is_registered_and_needs_the_federated_forest_model() -> None:
    aggregator = aggregators.create("forest-histograms")
    assert isinstance(aggregator, ForestHistograms)
    with pytest.raises(ConfigError, match="federated-forest"):
        aggregator.reset({"w": np.zeros(3)})


def test_round_one_bins_small_integer_features_exactly_and_others_by_quantiles() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 5, 300), rng.normal(size=300)]).astype(float)
    spec = DataSpec(2, (0, 1))
    shares = [Dataset(x[i::3], rng.integers(0, 2, 100)) for i in range(3)]
    start = FederatedForestAdapter(spec, max_bins=16).get_params()
    params = one_round(start, client_updates(spec, shares, start, max_bins=16))
    n_edges = params["n_edges"]
    np.testing.assert_array_equal(params["edges"][0, : n_edges[0]], [0.5, 1.5, 2.5, 3.5])
    continuous = params["edges"][1, : n_edges[1]]
    assert n_edges[1] == 15 and (np.diff(continuous) > 0).all()
    assert continuous[7] == pytest.approx(np.median(x[:, 1]), abs=0.2)
    assert len(params["frontier"]) == 100  # every tree's root is open


def test_the_sum_does_not_depend_on_the_order_updates_arrive(growing: Any) -> None:
    params, updates = growing
    forward = one_round(params, updates)
    backward = one_round(params, updates[::-1])
    assert list(forward) == list(backward)
    for name in forward:
        np.testing.assert_array_equal(forward[name], backward[name], err_msg=name)


def test_histograms_are_summed_as_counts_not_averaged(growing: Any) -> None:
    params, updates = growing
    grown = one_round(params, updates)
    roots = grown["value"][:3]
    per_client = sum(np.asarray(u.params["hist"], dtype=np.float64)[:, 0].sum(axis=1)
                     for u in updates)
    np.testing.assert_array_equal(roots, per_client)


def test_features_found_constant_in_a_node_are_remembered_and_drawn_last(growing: Any) -> None:
    params, updates = growing
    grown = one_round(params, updates)
    summed = np.sum([np.asarray(u.params["hist"], dtype=np.float64) for u in updates], axis=0)
    position = {int(node): i for i, node in enumerate(grown["frontier"])}
    checked = flagged = 0
    for root in range(3):
        flat = params["candidates"][root][(summed[root].sum(axis=2) > 0).sum(axis=1) <= 1]
        flagged += len(flat)
        for child in (grown["left"][root], grown["left"][root] + 1):
            if grown["left"][root] < 0 or child not in position:
                continue
            row = position[child]
            known = grown["constant"][row]
            assert known[flat].all()
            drawn_flags = known[grown["candidates"][row]]
            assert (np.diff(drawn_flags.astype(int)) >= 0).all()  # known constants come last
            checked += 1
    assert checked and flagged  # digits' border pixels are constant: some roots drew them


def _tamper(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Params], Params]:
    def apply(params: Params) -> Params:
        out = {k: np.array(v) for k, v in params.items()}
        out[name] = change(out[name])
        return out
    return apply


def _first_count(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(hist: np.ndarray) -> np.ndarray:
        hist.reshape(-1)[0] = value
        return hist
    return change


@pytest.mark.parametrize(("reason", "tamper"), [
    ("negative_counts", _tamper("hist", lambda h: h - 1)),
    ("not_finite", _tamper("hist", _first_count(np.nan))),
    ("inconsistent_histogram", _tamper("hist", _first_count(1e6))),
    ("changed_forest", _tamper("threshold", lambda t: t + 1)),
    ("changed_forest", _tamper("candidates", lambda c: c[::-1].copy())),
    ("wrong_shape", _tamper("hist", lambda h: h[:1])),
])
def test_a_bad_update_is_refused_with_a_reason(
    growing: Any, reason: str, tamper: Callable[[Params], Params]
) -> None:
    params, updates = growing
    aggregator = ForestHistograms()
    aggregator.reset(params)
    with pytest.raises(RejectedUpdate) as caught:
        aggregator.accept(update(tamper(dict(updates[0].params))))
    assert caught.value.reason == reason
    assert aggregator.accepted == 0
    with pytest.raises(RejectedUpdate) as caught:
        aggregator.accept(update(dict(updates[0].params), examples=0))
    assert caught.value.reason == "no_examples"


def test_a_decreasing_quantile_sketch_is_refused(digits_shares: Any) -> None:
    spec, shares = digits_shares
    start = FederatedForestAdapter(spec).get_params()
    sent = dict(client_updates(spec, shares[:1], start)[0].params)
    sent["sketch"] = sent["sketch"][:, ::-1].copy()
    sent["sketch"][:, 0] += 1.0
    aggregator = ForestHistograms()
    aggregator.reset(start)
    with pytest.raises(RejectedUpdate) as caught:
        aggregator.accept(update(sent))
    assert caught.value.reason == "bad_sketch"


def test_splits_respect_min_samples_leaf_and_skip_constant_candidates() -> None:
    hist = np.zeros((1, 3, 4, 2))
    hist[0, 0, 2] = [5, 5]  # candidate 0 is constant in this node: it must not compete
    hist[0, 1] = [[1, 0], [0, 4], [4, 1], [0, 0]]  # the best cut would leave 1 row on the left
    hist[0, 2] = [[3, 0], [2, 1], [0, 4], [0, 0]]
    total = hist[:, 0].sum(axis=1)
    j, b, children = best_splits(hist, total, settings(max_features=2, min_samples_leaf=2))
    assert (j[0], b[0]) == (2, 1)
    np.testing.assert_array_equal(children[0], [[5, 1], [0, 4]])
    j, _, _ = best_splits(hist, total, settings(max_features=1, min_samples_leaf=6))
    assert j[0] == -1  # no cut leaves 6 rows on both sides: the node becomes a leaf


def test_the_broadcast_carries_no_histograms_and_an_update_must_fill_them_in(
    growing: tuple[Params, list[Message]],
) -> None:
    params, updates = growing
    open_nodes = len(params["frontier"])
    assert open_nodes == 3 and params["hist"].shape[0] == 0  # a placeholder, not zeros to send
    assert updates[0].params["hist"].shape == (open_nodes, *params["hist"].shape[1:])
    lazy = dict(updates[0].params)
    lazy["hist"] = params["hist"]  # a client that sends the placeholder back
    aggregator = ForestHistograms()
    aggregator.reset(params)
    with pytest.raises(RejectedUpdate) as caught:
        aggregator.accept(update(lazy))
    assert caught.value.reason == "wrong_shape"
    grown = one_round(params, updates)
    assert len(grown["frontier"]) and grown["hist"].shape[0] == 0


def test_regression_splits_minimise_the_squared_error_and_respect_min_samples_leaf() -> None:
    def moments(*targets: float) -> list[float]:
        y = np.array(targets)
        return [len(y), y.sum(), (y**2).sum()]

    hist = np.array([[
        [moments(1, 1), moments(1, 5), moments(5, 5), moments()],  # mixed in bin 1: no pure cut
        [moments(1, 1), moments(1), moments(5, 5, 5), moments()],  # after bin 1: both sides pure
    ]])
    total = hist[:, 0].sum(axis=1)
    regression = settings(n_classes=0, regression=1, n_features=2, max_features=2,
                          n_candidates=2)
    j, b, children = best_splits(hist, total, regression)
    assert (j[0], b[0]) == (1, 1)
    np.testing.assert_array_equal(children[0], [moments(1, 1, 1), moments(5, 5, 5)])
    j, _, _ = best_splits(hist, total, replace(regression, min_samples_leaf=4))
    assert j[0] == -1  # six rows cannot make two leaves of four


def test_a_regression_update_may_hold_negative_target_sums_but_no_negative_weights() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 2)), rng.normal(-5.0, 1.0, 60)  # every target is negative
    spec = DataSpec(2, (), task="regression")
    shares = [Dataset(x[:30], y[:30]), Dataset(x[30:], y[30:])]
    start = FederatedForestAdapter(spec, n_estimators=2).get_params()
    params = one_round(start, client_updates(spec, shares, start, n_estimators=2))
    updates = client_updates(spec, shares, params, n_estimators=2)
    assert (updates[0].params["hist"][..., 1] < 0).any()
    grown = one_round(params, updates)  # accepted: a target sum may be negative
    assert len(grown["left"]) > len(params["left"])
    broken = dict(updates[0].params)
    broken["hist"] = broken["hist"].copy()
    broken["hist"][..., 0] *= -1
    aggregator = ForestHistograms()
    aggregator.reset(params)
    with pytest.raises(RejectedUpdate) as caught:
        aggregator.accept(update(broken))
    assert caught.value.reason == "negative_counts"


def test_a_finished_forest_is_kept_as_is_and_max_depth_holds(digits_shares: Any) -> None:
    spec, shares = digits_shares
    options: dict[str, Any] = {"n_estimators": 4, "max_depth": 3}
    params = FederatedForestAdapter(spec, **options).get_params()
    for _ in range(6):
        params = one_round(params, client_updates(spec, shares, params, **options))
    assert not len(params["frontier"]) and params["depth"].max() == 3
    again = one_round(params, client_updates(spec, shares, params, **options))
    for name in params:
        np.testing.assert_array_equal(again[name], params[name], err_msg=name)


def finished_forest_job(dataset: str, trees: int, rounds: int) -> JobResult:
    """A real job (10 IID clients, in-process transport) whose forest finished growing."""
    result = run_job_sync(JobSpec.from_dict({
        "job_id": f"federated-forest-{dataset}", "seed": 0, "rounds": rounds,
        "round_timeout": 60, "data": {"dataset": dataset, "partition": "iid"},
        "clients": {"count": 10}, "aggregator": "forest-histograms",
        "model": {"type": "federated-forest", "params": {"n_estimators": trees}},
    }))
    assert all(r.status == "ok" and r.accepted == 10 for r in result.history)
    assert not len(result.params["frontier"])  # the forest finished growing
    assert result.final_metrics["open_nodes"] == 0
    assert result.final_metrics["nodes"] == len(result.params["left"])
    return result


def test_a_job_that_ends_before_the_forest_is_complete_says_so_in_its_metrics() -> None:
    result = run_job_sync(JobSpec.from_dict({
        "job_id": "short", "seed": 0, "rounds": 3, "data": {"dataset": "diabetes"},
        "clients": {"count": 3}, "aggregator": "forest-histograms",
        "model": {"type": "federated-forest", "params": {"n_estimators": 4}},
    }))
    first = result.history[0].metrics  # round 1 set the bins: every root is still open
    assert (first["open_nodes"], first["nodes"]) == (4, 4)
    assert result.final_metrics["open_nodes"] == len(result.params["frontier"]) > 0


def test_a_federated_job_scores_within_two_points_of_a_central_random_forest() -> None:
    from sklearn.ensemble import RandomForestClassifier

    result = finished_forest_job("digits", trees=20, rounds=22)
    train, test, _ = load_dataset("digits", seed=0)  # the job's own split
    central = RandomForestClassifier(n_estimators=20, random_state=0).fit(train.x, train.y)
    assert result.final_metrics["accuracy"] >= central.score(test.x, test.y) - 0.02


def test_a_federated_regression_job_scores_like_a_central_random_forest_regressor() -> None:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score

    result = finished_forest_job("diabetes", trees=20, rounds=30)
    train, test, _ = load_dataset("diabetes", seed=0)  # the job's own split
    central = RandomForestRegressor(n_estimators=20, random_state=0).fit(train.x, train.y)
    assert result.final_metrics["r2"] >= r2_score(test.y, central.predict(test.x)) - 0.03


@pytest.mark.parametrize("dataset", ["digits", "diabetes"])
def test_a_forest_grown_through_a_tree_of_edges_is_the_flat_forest(dataset: str) -> None:
    job: dict[str, Any] = {
        "job_id": "forest-tree", "seed": 0, "rounds": 30, "round_timeout": 60,
        "data": {"dataset": dataset, "partition": "iid"}, "clients": {"count": 5},
        "model": {"type": "federated-forest", "params": {"n_estimators": 4}},
        "aggregator": "forest-histograms",
    }
    flat = run_job_sync(JobSpec.from_dict(job))
    tree = run_job_sync(JobSpec.from_dict(job | {"topology": {
        "type": "hierarchical", "params": {"tree": [
            {"edge": "north", "children": ["client-000", "client-001"]},
            {"edge": "south", "children": [
                "client-002", {"edge": "deep", "children": ["client-003", "client-004"]}]},
        ]}}}))
    assert not len(flat.params["frontier"]) and len(flat.params["left"]) > 100
    for name, array in flat.params.items():
        if name == "value" and dataset == "diabetes":  # float64 sums, added in another order
            np.testing.assert_allclose(tree.params[name], array, rtol=1e-12)
        else:  # the same splits, thresholds and (integer) counts
            np.testing.assert_array_equal(tree.params[name], array, err_msg=name)
