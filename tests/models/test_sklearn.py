"""scikit-learn adapters: named arrays round-trip, unseen classes are kept, federated runs learn."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.data.partition import partition
from foedus.models.base import build_model
from foedus.models.sklearn import SklearnLogisticRegression
from foedus.runner import run_job

Loaded = tuple[Dataset, Dataset, DataSpec]
CLASSIFIERS = ["sklearn-sgd", "sklearn-logistic", "sklearn-mlp"]
REGRESSORS = ["sklearn-sgd-regressor", "sklearn-ridge", "sklearn-mlp"]
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits() -> Loaded:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def diabetes() -> Loaded:
    return load_dataset("diabetes")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_parameters_round_trip_into_a_fresh_adapter(name: str, digits: Loaded) -> None:
    train, test, spec = digits
    trained = build_model(name, spec, seed=1)
    trained.fit(train)
    fresh = build_model(name, spec, seed=2)
    fresh.set_params(trained.get_params())
    assert fresh.evaluate(test) == pytest.approx(trained.evaluate(test))
    assert {k: v.shape for k, v in fresh.get_params().items()} == {
        k: v.shape for k, v in trained.get_params().items()}


@pytest.mark.parametrize("name", REGRESSORS)
def test_regressor_parameters_round_trip_into_a_fresh_adapter(name: str, diabetes: Loaded) -> None:
    train, test, spec = diabetes
    trained = build_model(name, spec, seed=1)
    trained.fit(train, epochs=3)
    fresh = build_model(name, spec, seed=2)
    fresh.set_params(trained.get_params())
    assert fresh.evaluate(test) == pytest.approx(trained.evaluate(test))
    assert set(fresh.evaluate(test)) == {"loss", "r2"}


def test_every_client_starts_from_the_same_weights_under_one_seed(digits: Loaded) -> None:
    a, b = build_model("sklearn-mlp", digits[2], seed=4), build_model("sklearn-mlp", digits[2],
                                                                       seed=4)
    for name, value in a.get_params().items():
        np.testing.assert_array_equal(value, b.get_params()[name])


def test_logistic_regression_keeps_rows_for_classes_a_client_never_saw(digits: Loaded) -> None:
    train, test, spec = digits
    seen = [1, 4, 8]
    local = train.subset(np.flatnonzero(np.isin(train.y, seen)))
    adapter = build_model("sklearn-logistic", spec)
    assert isinstance(adapter, SklearnLogisticRegression)
    x, y, weight = adapter.padded(local)
    assert sorted(y[weight == 0].tolist()) == [c for c in range(10) if c not in seen]
    assert not x[weight == 0].any()
    adapter.fit(local)
    assert adapter.get_params()["coef"].shape == (10, spec.n_features)
    mine = test.subset(np.flatnonzero(np.isin(test.y, seen)))
    assert adapter.evaluate(mine)["accuracy"] > 0.9
    assert set(np.unique(adapter.model.predict(test.x))) <= set(seen)


def test_logistic_regression_warm_starts_from_the_global_model(digits: Loaded) -> None:
    train, test, spec = digits
    good = build_model("sklearn-logistic", spec)
    good.fit(train, epochs=5)
    one_step = build_model("sklearn-logistic", spec, max_iter=1)
    one_step.set_params(good.get_params())
    one_step.fit(train)
    assert one_step.evaluate(test)["accuracy"] > 0.9  # one iteration from zero could not do this


def test_regressors_refuse_classification_data_and_classifiers_regression_data(
    digits: Loaded, diabetes: Loaded
) -> None:
    with pytest.raises(ConfigError, match="regressor"):
        build_model("sklearn-ridge", digits[2])
    with pytest.raises(ConfigError, match="classifier"):
        build_model("sklearn-logistic", diabetes[2])


def test_the_diabetes_dataset_is_a_standardised_regression_task(diabetes: Loaded) -> None:
    train, test, spec = diabetes
    assert spec.task == "regression" and spec.classes == () and spec.n_features == 10
    assert abs(float(train.y.mean())) < 1e-5 and float(train.y.std()) == pytest.approx(1, 1e-4)
    assert len(train) + len(test) == 442


def _job(model: str, dataset: str, partition: str = "iid", **params: object) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": f"{model}-{dataset}", "rounds": 4,
        "data": {"dataset": dataset, "partition": partition, "alpha": 0.2},
        "clients": {"count": 4, "epochs": 2}, "model": {"type": model, "params": params},
    })


@pytest.mark.parametrize("name", CLASSIFIERS)
async def test_federated_classifiers_learn_digits_far_above_chance(name: str) -> None:
    result = await run_job(_job(name, "digits"))
    assert result.final_metrics["accuracy"] > 0.85  # chance is 0.1


@pytest.mark.parametrize("name", REGRESSORS)
async def test_federated_regressors_explain_diabetes_progression(name: str) -> None:
    result = await run_job(_job(name, "diabetes"))
    assert result.final_metrics["r2"] > 0.2  # predicting the mean gives 0


async def test_logistic_regression_federates_under_strong_label_skew(digits: Loaded) -> None:
    spec = _job("sklearn-logistic", "digits", partition="dirichlet")
    shares = partition(digits[0], 4, scheme="dirichlet", alpha=0.2, seed=spec.seed)
    assert min(len(np.unique(s.y)) for s in shares) < 10  # some client lacks some classes
    result = await run_job(spec)
    assert all(r.accepted == 4 for r in result.history)  # no client failed on missing classes
    assert result.final_metrics["accuracy"] > 0.8


def test_logistic_regression_penalty_is_per_example_so_data_size_does_not_change_the_optimum(
    digits: Loaded,
) -> None:
    # FedAvg of clients each holding 1/10 of the rows only targets the centralized optimum if
    # the penalty does not grow relative to the loss as a client's data shrinks.
    train, _, spec = digits
    rows = np.arange(300)
    once = train.subset(rows)
    twice = train.subset(np.concatenate([rows, rows]))  # same mean loss, twice the sum

    def coefficients(data: Dataset, **options: Any) -> np.ndarray:
        adapter = build_model("sklearn-logistic", spec, max_iter=2000, **options)
        adapter.fit(data)
        return adapter.get_params()["coef"]

    np.testing.assert_allclose(coefficients(once), coefficients(twice), atol=1e-3)
    # scikit-learn's own C weighs the summed loss: doubling the rows weakens the penalty
    assert not np.allclose(coefficients(once, C=1.0), coefficients(twice, C=1.0), atol=1e-3)
    with pytest.raises(ConfigError, match="alpha"):
        build_model("sklearn-logistic", spec, alpha=0.0)


def test_clients_on_threads_of_one_process_take_turns_in_scikit_learn(
    digits: Loaded, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # scikit-learn's Parallel saves and resets the process-wide warning filters around every
    # task, so two threads inside it at once can corrupt them (see SKLEARN_LOCK)
    from sklearn.linear_model import SGDClassifier

    train, _, spec = digits
    inside, most = 0, 0
    guard = threading.Lock()
    original = SGDClassifier.partial_fit

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.01)  # long enough for another thread to try to enter
        try:
            return original(self, *args, **kwargs)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(SGDClassifier, "partial_fit", counted)
    shares = partition(train, 4, scheme="iid", seed=0)
    models = [build_model("sklearn-sgd", spec, seed=0) for _ in shares]
    pairs = list(zip(models, shares, strict=True))
    threads = [threading.Thread(target=m.fit, args=(share,)) for m, share in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1
    assert all(m.evaluate(share)["accuracy"] > 0.5 for m, share in pairs)


def test_the_mlp_takes_scikit_learns_own_name_for_its_layers() -> None:
    from foedus.models.base import build_model

    spec = DataSpec(n_features=4, classes=(0, 1))
    named = build_model("sklearn-mlp", spec, hidden_layer_sizes=[7, 3])
    ours = build_model("sklearn-mlp", spec, hidden=[7, 3])
    assert [a.shape for a in named.get_params().values()] == \
        [a.shape for a in ours.get_params().values()]
    with pytest.raises(ConfigError, match="give hidden or hidden_layer_sizes"):
        build_model("sklearn-mlp", spec, hidden=[5], hidden_layer_sizes=[7])


@pytest.mark.parametrize(("name", "options", "message"), [
    ("sklearn-sgd", {"alpha": "1e-4"}, "The 'alpha' parameter of SGDClassifier"),
    ("sklearn-sgd", {"aplha": 1e-4},
     "SGDClassifier got an unexpected keyword argument 'aplha'; allowed: alpha"),
    ("sklearn-logistic", {"solver": "newton"}, "The 'solver' parameter of LogisticRegression"),
    ("sklearn-mlp", {"activation": "rleu"}, "The 'activation' parameter of MLPClassifier"),
])
def test_a_bad_estimator_option_is_refused_when_the_model_is_built(
        digits: Loaded, name: str, options: dict[str, Any], message: str) -> None:
    """scikit-learn checks values only in fit: before, such a job passed every check and then
    every client failed round 1, so the job ended without a model (exit 1, not 2)."""
    with pytest.raises(ConfigError, match=message):
        build_model(name, digits[2], **options)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("sklearn-sgd-regressor", {"eta0": -1.0}, "The 'eta0' parameter of SGDRegressor"),
    ("sklearn-ridge", {"alpha": "1"}, "The 'alpha' parameter of Ridge"),
])
def test_a_bad_regressor_option_is_refused_when_the_model_is_built(
        diabetes: Loaded, name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, diabetes[2], **options)


def test_a_job_with_a_mistyped_estimator_option_is_refused_before_round_1() -> None:
    spec = JobSpec.from_dict({"job_id": "x", "rounds": 1, "clients": {"count": 2},
                              "model": {"type": "sklearn-sgd", "params": {"alpha": "1e-4"}}})
    with pytest.raises(ConfigError, match="model: The 'alpha' parameter of SGDClassifier"):
        asyncio.run(run_job(spec))
