"""Tree-ensemble adapters: trees travel as validated arrays and bag into a federated forest."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import foedus.trees.bagging.aggregator  # noqa: F401  (registers tree-bagging)
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.models.base import build_model
from foedus.runner import run_job
from foedus.trees.bagging.sklearn_adapter import TreeEnsembleAdapter

Loaded = tuple[Dataset, Dataset, DataSpec]


@pytest.fixture(scope="module")
def digits() -> Loaded:
    return load_dataset("digits")


def test_a_rebuilt_forest_predicts_exactly_like_the_trained_one(digits: Loaded) -> None:
    train, test, spec = digits
    trained = TreeEnsembleAdapter(spec, n_estimators=8)
    trained.fit(train)
    rebuilt = TreeEnsembleAdapter(spec)
    rebuilt.set_params(trained.get_params())
    np.testing.assert_array_equal(rebuilt.predict_values(test.x), trained.predict_values(test.x))
    assert rebuilt.evaluate(test) == trained.evaluate(test)


def test_the_rebuilt_forest_matches_scikit_learns_own_prediction(digits: Loaded) -> None:
    from sklearn.ensemble import RandomForestClassifier

    train, test, spec = digits
    reference = RandomForestClassifier(n_estimators=5, random_state=3).fit(train.x, train.y)
    adapter = TreeEnsembleAdapter(spec, n_estimators=5)
    adapter._load(adapter._export(reference))
    np.testing.assert_allclose(adapter.predict_values(test.x), reference.predict_proba(test.x))


def test_classes_a_client_never_saw_get_zero_columns_in_the_job_label_order(digits: Loaded) -> None:
    train, test, spec = digits
    only = np.isin(train.y, [2, 5, 7])
    adapter = TreeEnsembleAdapter(spec, n_estimators=4)
    adapter.fit(train.subset(np.flatnonzero(only)))
    value = adapter.get_params()["forest/value"]
    assert value.shape[1] == len(spec.classes)
    unseen = [c for c in range(10) if c not in (2, 5, 7)]
    assert not value[:, unseen].any()
    assert set(np.unique(adapter.predict(test.x))) <= {2, 5, 7}


def test_fit_scores_the_received_global_forest_on_local_data_first(digits: Loaded) -> None:
    train, _, spec = digits
    server_side = TreeEnsembleAdapter(spec, n_estimators=4)
    server_side.fit(train)
    client = TreeEnsembleAdapter(spec, n_estimators=4)
    assert "global_accuracy" not in client.fit(train)
    client.set_params(server_side.get_params())
    metrics = client.fit(train)
    assert metrics["global_accuracy"] > 0.8
    assert 0 < metrics["validation_score"] <= 1


def test_a_hostile_forest_is_refused_before_scikit_learn_sees_it(digits: Loaded) -> None:
    train, _, spec = digits
    adapter = TreeEnsembleAdapter(spec, n_estimators=2)
    adapter.fit(train)
    params = {k: np.array(v) for k, v in adapter.get_params().items()}
    params["forest/left"][0] = 10**9  # would make the C tree walker read far out of bounds
    with pytest.raises(RejectedUpdate):
        TreeEnsembleAdapter(spec).set_params(params)


def test_an_unknown_estimator_option_is_a_configuration_error(digits: Loaded) -> None:
    with pytest.raises(ConfigError, match="max_leaves"):
        build_model("sklearn-random-forest", digits[2], max_leaves=3)


def _job(model: str, dataset: str, **params: object) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": f"trees-{model}-{dataset}", "rounds": 2,
        "data": {"dataset": dataset, "partition": "iid"}, "clients": {"count": 4},
        "model": {"type": model, "params": {"n_estimators": 8, **params}},
        "aggregator": {"type": "tree-bagging", "params": {"max_trees": 24}},
    })


@pytest.mark.parametrize("model", ["sklearn-random-forest", "sklearn-extra-trees"])
async def test_bagged_forests_of_four_clients_classify_digits_far_above_chance(
    model: str,
) -> None:
    result = await run_job(_job(model, "digits"))
    assert all(r.status == "ok" and r.accepted == 4 for r in result.history)
    assert result.final_metrics["accuracy"] > 0.85  # chance is 0.1
    assert result.params["forest/weight"].shape == (24,)  # capped at max_trees


async def test_a_bagged_regression_forest_explains_diabetes_progression() -> None:
    result = await run_job(_job("sklearn-random-forest", "diabetes", min_samples_leaf=5))
    assert result.final_metrics["r2"] > 0.25  # predicting the mean gives 0


def test_random_forests_default_to_no_bootstrap_unless_the_job_asks(digits: Loaded) -> None:
    spec = digits[2]
    assert TreeEnsembleAdapter(spec)._estimator().bootstrap is False
    assert TreeEnsembleAdapter(spec, bootstrap=True)._estimator().bootstrap is True
    assert TreeEnsembleAdapter(spec, kind="extra-trees")._estimator().bootstrap is False
    assert TreeEnsembleAdapter(spec).validation_fraction == 0.0


@pytest.mark.parametrize(("options", "message"), [
    ({"n_estimators": "5"}, "n_estimators must be an integer >= 1, got '5'"),
    ({"validation_fraction": "0.2"}, "validation_fraction must be a number in"),
    ({"max_depth": -3}, "The 'max_depth' parameter of RandomForestClassifier"),
])
def test_a_mistyped_or_out_of_range_option_is_refused_when_the_model_is_built(
        digits: Loaded, options: dict[str, Any], message: str) -> None:
    """Before, a string n_estimators failed with "'<' not supported between instances", and a
    bad estimator value passed until every client failed to fit in round 1."""
    with pytest.raises(ConfigError, match=message):
        build_model("sklearn-random-forest", digits[2], **options)
