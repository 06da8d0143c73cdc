"""The federated forest's client side: sketches, bootstrap weights, histograms, validation.

The forest is grown by the ``forest-histograms`` aggregator; ``grow`` below plays one job's
rounds in-process (adapters and aggregator, no transport) so the tests can compare the forest
with what a central computation on the pooled rows picks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.data.partition import partition
from foedus.models.base import build_model
from foedus.trees.histforest.adapter import FederatedForestAdapter
from foedus.trees.histforest.aggregator import ForestHistograms
from foedus.trees.histforest.format import REPORTED, unpack
from foedus.trees.histforest.measure import bootstrap_weights
from foedus.trees.histforest.predict import predict_proba, predict_value


def grow(spec: DataSpec, shares: list[Dataset], rounds: int = 40,
         **options: Any) -> dict[str, np.ndarray]:
    """The global model after ``rounds`` rounds (or once no node is open)."""
    params = FederatedForestAdapter(spec, **options).get_params()
    aggregator = ForestHistograms()
    for rnd in range(1, rounds + 1):
        aggregator.reset(params)
        for i, share in enumerate(shares):
            client = FederatedForestAdapter(spec, **options)
            client.set_params(params)
            client.fit(share)
            aggregator.accept(Message.create(
                Kind.UPDATE, job_id="t", round=rnd, sender=f"c{i}", params=client.get_params(),
                num_examples=len(share)))
        params = aggregator.result()
        if rnd > 1 and not len(params["frontier"]):
            break
    return params


def gini_best_split(x: np.ndarray, y: np.ndarray, thresholds: list[np.ndarray]) -> tuple[int,
                                                                                       float]:
    """Brute force on pooled rows: the (feature, threshold) with the lowest weighted Gini."""
    best = (-1, 0.0, np.inf)
    for f, cuts in enumerate(thresholds):
        for t in cuts:
            impurity = 0.0
            for side in (x[:, f] < t, x[:, f] >= t):
                if side.sum():
                    p = np.bincount(y[side], minlength=3) / side.sum()
                    impurity += side.sum() * (1 - (p**2).sum())
            if side.all() or not side.any():
                continue
            if impurity < best[2] - 1e-12:
                best = (f, float(t), impurity)
    return best[0], best[1]


def squared_error_best_split(x: np.ndarray, y: np.ndarray,
                             thresholds: list[np.ndarray]) -> tuple[int, float]:
    """Brute force on pooled rows: the (feature, threshold) with the lowest summed squared error
    of the two sides around their means."""
    best = (-1, 0.0, np.inf)
    for f, cuts in enumerate(thresholds):
        for t in cuts:
            sides = (x[:, f] < t, x[:, f] >= t)
            if not all(side.any() for side in sides):
                continue
            error = sum(float(((y[side] - y[side].mean()) ** 2).sum()) for side in sides)
            if error < best[2] - 1e-9:
                best = (f, float(t), error)
    return best[0], best[1]


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset, DataSpec]:
    return load_dataset("digits")


def test_the_root_split_on_summed_histograms_is_the_central_gini_best_split() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, size=(40, 3)).astype(float)
    y = np.where(x[:, 1] >= 3, 2, np.where(x[:, 0] >= 4, 1, 0))
    y[rng.choice(40, 5, replace=False)] = 0  # some noise: the best split must still be found
    spec = DataSpec(3, (0, 1, 2))
    shares = [Dataset(x[i::3], y[i::3]) for i in range(3)]
    params = grow(spec, shares, rounds=2, n_estimators=1, bootstrap=False, max_features=None,
                  candidate_factor=1)
    values = [np.unique(x[:, f]) for f in range(3)]
    cuts = [(v[:-1] + v[1:]) / 2 for v in values]  # exact bins: midpoints, as scikit-learn
    feature, threshold = gini_best_split(x, y, cuts)
    assert params["feature"][0] == feature
    assert params["threshold"][0] == pytest.approx(threshold)
    children = params["value"][params["left"][0]: params["left"][0] + 2]
    np.testing.assert_array_equal(children[0], np.bincount(y[x[:, feature] < threshold],
                                                           minlength=3))


def test_the_root_split_of_a_regression_forest_is_the_central_squared_error_best_split() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, size=(60, 3)).astype(float)
    y = 3.0 * (x[:, 2] >= 2) + 0.5 * x[:, 0] + rng.normal(0.0, 0.3, 60) - 10.0
    spec = DataSpec(3, (), task="regression")
    shares = [Dataset(x[i::3], y[i::3]) for i in range(3)]
    params = grow(spec, shares, rounds=2, n_estimators=1, bootstrap=False, max_features=None,
                  candidate_factor=1)
    cuts = [(v[:-1] + v[1:]) / 2 for v in (np.unique(x[:, f]) for f in range(3))]
    feature, threshold = squared_error_best_split(x, y, cuts)
    assert params["feature"][0] == feature
    assert params["threshold"][0] == pytest.approx(threshold)
    left = y[x[:, feature] < threshold]
    child = params["value"][params["left"][0]]
    np.testing.assert_allclose(child, [len(left), left.sum(), (left**2).sum()])


def test_a_regression_leaf_predicts_the_mean_target_of_its_rows() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 2))
    y = np.where(x[:, 0] > 0.3, 5.0, -2.0) + rng.normal(0.0, 1.0, 90)
    spec = DataSpec(2, (), task="regression")
    options: dict[str, Any] = {"n_estimators": 1, "bootstrap": False, "max_depth": 1,
                               "max_features": None}
    params = grow(spec, [Dataset(x[:45], y[:45]), Dataset(x[45:], y[45:])], **options)
    state = unpack(params)
    assert not len(state.frontier) and state.depth.max() == 1
    goes_right = x[:, state.feature[0]] >= state.threshold[0]
    predicted = predict_value(x, state)
    np.testing.assert_allclose(predicted[goes_right], y[goes_right].mean())
    np.testing.assert_allclose(predicted[~goes_right], y[~goes_right].mean())
    model = FederatedForestAdapter(spec, **options)
    model.set_params(params)
    np.testing.assert_allclose(model.predict(x), predicted)
    assert set(model.evaluate(Dataset(x, y))) == {"loss", "r2", "open_nodes", "nodes"}


def test_the_forest_does_not_depend_on_how_the_rows_are_split_among_clients(digits: Any) -> None:
    train, _, spec = digits
    ten = grow(spec, partition(train, 10, scheme="iid", seed=0), n_estimators=4)
    three = grow(spec, partition(train, 3, scheme="iid", seed=5), n_estimators=4)
    for name in ("left", "feature", "threshold", "value", "depth"):
        np.testing.assert_array_equal(ten[name], three[name], err_msg=name)


def test_a_grown_forest_predicts_like_a_central_random_forest(digits: Any) -> None:
    from sklearn.ensemble import RandomForestClassifier

    train, test, spec = digits
    params = grow(spec, partition(train, 10, scheme="iid", seed=0), n_estimators=20)
    model = FederatedForestAdapter(spec, n_estimators=20)
    model.set_params(params)
    central = RandomForestClassifier(n_estimators=20, random_state=0).fit(train.x, train.y)
    assert model.evaluate(test)["accuracy"] > central.score(test.x, test.y) - 0.03
    proba = predict_proba(np.asarray(test.x), unpack(params))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_bootstrap_weights_are_poisson_one_and_follow_the_row_not_its_position() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 4)), rng.integers(0, 2, 2000)
    settings = FederatedForestAdapter(DataSpec(4, (0, 1)), n_estimators=50, seed=3).settings
    w = bootstrap_weights(x, y, settings)
    assert w.shape == (50, 2000)
    assert w.mean() == pytest.approx(1.0, abs=0.02)
    assert w.var() == pytest.approx(1.0, abs=0.05)
    assert (w[0] != w[1]).any()  # trees draw different samples
    order = rng.permutation(2000)
    np.testing.assert_array_equal(bootstrap_weights(x[order], y[order], settings), w[:, order])
    other_seed = FederatedForestAdapter(DataSpec(4, (0, 1)), n_estimators=50, seed=4).settings
    assert (bootstrap_weights(x, y, other_seed) != w).any()


def test_a_client_fills_in_only_what_the_round_asks_for(digits: Any) -> None:
    train, _, spec = digits
    client = FederatedForestAdapter(spec, n_estimators=3)
    before = client.get_params()
    client.fit(train)
    after = client.get_params()
    assert list(after) == list(before)
    for name in before:
        assert after[name].shape == before[name].shape and after[name].dtype == before[name].dtype
        if name not in REPORTED:
            np.testing.assert_array_equal(after[name], before[name])
    assert after["exact"].all()  # digits pixels take 17 values: every feature is exact


def test_the_model_is_registered_and_refuses_what_it_cannot_do() -> None:
    spec = DataSpec(4, (0, 1))
    assert isinstance(build_model("federated-forest", spec, 0), FederatedForestAdapter)
    with pytest.raises(ConfigError, match="classification and regression"):
        FederatedForestAdapter(DataSpec(4, (), task="ranking"))
    with pytest.raises(ConfigError, match="finite target"):
        FederatedForestAdapter(DataSpec(4, (), task="regression")).fit(
            Dataset(np.zeros((2, 4)), np.array([1.0, np.nan])))
    with pytest.raises(ConfigError, match="max_features"):
        FederatedForestAdapter(spec, max_features="most")
    with pytest.raises(ConfigError, match="max_bins"):
        FederatedForestAdapter(spec, max_bins=1)
    with pytest.raises(ConfigError, match="not in the job's classes"):
        FederatedForestAdapter(spec).fit(Dataset(np.zeros((3, 4)), np.array([0, 1, 7])))


def test_a_model_with_other_settings_or_broken_indices_is_refused(digits: Any) -> None:
    train, _, spec = digits
    params = grow(spec, [train], rounds=3, n_estimators=2)
    client = FederatedForestAdapter(spec, n_estimators=3)
    with pytest.raises(RejectedUpdate) as caught:
        client.set_params(params)
    assert caught.value.reason == "wrong_settings"
    loop = dict(params)
    loop["left"] = params["left"].copy()
    loop["left"][0] = 0  # a node that is its own child would trap a row forever
    with pytest.raises(RejectedUpdate, match="after its parent"):
        unpack(loop)
    wild = dict(params)
    wild["feature"] = np.where(params["feature"] >= 0, 999, -1).astype(np.int32)
    with pytest.raises(RejectedUpdate, match="features out of range"):
        unpack(wild)
