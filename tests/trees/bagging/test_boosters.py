"""XGBoost booster bagging: boosters travel as checked JSON bytes and average into one model."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("xgboost")

import foedus.trees.bagging.aggregator  # noqa: F401  (registers tree-bagging)
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.models.base import build_model
from foedus.runner import run_job
from foedus.trees.bagging import packed_boosters as boosters
from foedus.trees.bagging.xgboost_adapter import FEDERATED_DEFAULTS, XGBoostBaggingAdapter

Loaded = tuple[Dataset, Dataset, DataSpec]


@pytest.fixture(scope="module")
def cancer() -> Loaded:
    return load_dataset("breast_cancer")


@pytest.fixture(scope="module")
def trained(cancer: Loaded) -> dict[str, np.ndarray]:
    train, _, spec = cancer
    adapter = XGBoostBaggingAdapter(spec, num_boost_round=5, params={"max_depth": 3})
    adapter.fit(train)
    return adapter.get_params()


def test_a_received_ensemble_predicts_exactly_like_the_trained_one(cancer: Loaded) -> None:
    train, test, spec = cancer
    a = XGBoostBaggingAdapter(spec, num_boost_round=5)
    a.fit(train)
    b = build_model("xgboost-bagging", spec)
    b.set_params(a.get_params())
    assert isinstance(b, XGBoostBaggingAdapter)
    np.testing.assert_array_equal(b.predict_values(test.x), a.predict_values(test.x))
    assert b.evaluate(test) == a.evaluate(test)


def test_the_ensemble_is_the_weighted_mean_of_its_boosters(cancer: Loaded) -> None:
    train, test, spec = cancer
    parts = []
    for seed, rows in enumerate((np.arange(0, 200), np.arange(200, 400))):
        adapter = XGBoostBaggingAdapter(spec, seed=seed, num_boost_round=3)
        adapter.fit(train.subset(rows))
        parts.append((adapter, boosters.unpack(adapter.get_params())))
    merged = boosters.concat([p for _, p in parts])
    merged = merged.select(np.arange(2), np.array([0.75, 0.25]))
    adapter = XGBoostBaggingAdapter(spec)
    adapter.set_params(merged.to_params())
    expected = (0.75 * parts[0][0].predict_values(test.x)
                + 0.25 * parts[1][0].predict_values(test.x))
    np.testing.assert_allclose(adapter.predict_values(test.x), expected, rtol=1e-6)


def test_training_statistics_are_blanked_before_a_booster_leaves_the_client(
    trained: dict[str, np.ndarray],
) -> None:
    model = json.loads(trained["boosters/model"].tobytes())
    trees = model["learner"]["gradient_booster"]["model"]["trees"]
    assert trees
    for tree in trees:
        assert not any(tree["sum_hessian"]) and not any(tree["loss_changes"])


def test_classes_a_client_never_saw_keep_their_columns_but_never_win() -> None:
    train, test, spec = load_dataset("digits")
    only = np.isin(train.y, [2, 5, 7])
    adapter = XGBoostBaggingAdapter(spec, num_boost_round=5)
    adapter.fit(train.subset(np.flatnonzero(only)))
    assert adapter.predict_values(test.x).shape == (len(test), len(spec.classes))
    assert set(np.unique(adapter.predict(test.x))) <= {2, 5, 7}


def _edit_tree(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        edit(doc["learner"]["gradient_booster"]["model"]["trees"][0])
    return apply


def _set(key: str, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(tree: dict[str, Any]) -> None:
        tree[key][index] = value
    return _edit_tree(edit)


def _set_param(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["learner"]["learner_model_param"][key] = value
    return edit


def _objective(doc: dict[str, Any]) -> None:
    doc["learner"]["objective"]["name"] = "binary:logistic"


def _drop_tree(doc: dict[str, Any]) -> None:
    doc["learner"]["gradient_booster"]["model"]["trees"].pop()


GARBLED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "child out of range": (_set("left_children", 0, 10_000), "bad_booster"),
    "child before parent (a cycle)": (_set("right_children", 0, 0), "bad_booster"),
    "parents disagree": (_set("parents", 1, 5), "bad_booster"),
    "feature out of range": (_set("split_indices", 0, 99), "bad_booster"),
    "categorical split": (_set("split_type", 0, 1), "bad_booster"),
    "wrong feature count": (_set_param("num_feature", "3"), "wrong_shape"),
    "wrong class count": (_set_param("num_class", "5"), "wrong_shape"),
    "foreign objective": (_objective, "bad_booster"),
    "tree list shorter than declared": (_drop_tree, "bad_booster"),
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_garbled_boosters_are_refused_with_a_reason_before_xgboost_sees_them(
    case: str, cancer: Loaded, trained: dict[str, np.ndarray],
) -> None:
    edit, reason = GARBLED[case]
    doc = json.loads(trained["boosters/model"].tobytes())
    edit(doc)
    raw = json.dumps(doc).encode()
    params = boosters.from_models(30, 2, "classification", [raw]).to_params()
    with pytest.raises(RejectedUpdate) as info:
        boosters.unpack(params)
    assert info.value.reason == reason
    with pytest.raises(RejectedUpdate):
        XGBoostBaggingAdapter(cancer[2]).set_params(params)


@pytest.mark.parametrize("raw", [b"\x00\xff garbage", b'{"learner": ', b"[1, 2, 3]",
                                 b'{"learner": {"x": NaN}}', b"[" * 100_000])
def test_bytes_that_are_not_a_booster_model_are_refused(raw: bytes) -> None:
    params = boosters.from_models(30, 2, "classification", [raw]).to_params()
    with pytest.raises(RejectedUpdate) as info:
        boosters.unpack(params)
    assert info.value.reason == "bad_booster"


def test_a_non_finite_split_is_refused(trained: dict[str, np.ndarray]) -> None:
    text = trained["boosters/model"].tobytes().decode()
    doc = json.loads(text)
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    tree["split_conditions"][0] = 1e400  # json writes inf as Infinity
    params = boosters.from_models(30, 2, "classification",
                                  [json.dumps(doc).encode()]).to_params()
    with pytest.raises(RejectedUpdate) as info:
        boosters.unpack(params)
    assert info.value.reason == "bad_booster"


def test_broken_framing_is_refused(trained: dict[str, np.ndarray]) -> None:
    bad_offsets = {**trained, "boosters/offsets": np.array([0, 10], dtype=np.int64)}
    bad_dtype = {**trained, "boosters/model": trained["boosters/model"].astype(np.int16)}
    nan_weight = {**trained, "boosters/weight": np.array([np.nan])}
    for params, reason in ((bad_offsets, "bad_booster"), (bad_dtype, "bad_booster"),
                           (nan_weight, "not_finite")):
        with pytest.raises(RejectedUpdate) as info:
            boosters.unpack(params)
        assert info.value.reason == reason
    with pytest.raises(RejectedUpdate) as info:
        boosters.unpack(trained, max_bytes=100)
    assert info.value.reason == "too_large"
    with pytest.raises(RejectedUpdate) as info:
        boosters.unpack(trained, n_features=4)
    assert info.value.reason == "wrong_shape"


@pytest.mark.parametrize("params", [{"num_class": 3}, {"objective": "binary:logistic"},
                                    {"seed": 1}])
def test_options_the_adapter_owns_are_configuration_errors(
    params: dict[str, Any], cancer: Loaded,
) -> None:
    with pytest.raises(ConfigError):
        XGBoostBaggingAdapter(cancer[2], params=params)


@pytest.mark.parametrize(("options", "message"), [
    ({"params": {"max_dept": 3}}, r'^params: XGBoost does not use "max_dept"'),
    ({"params": {"max_depth": -3}}, r"^params: XGBoost refuses them: value -3 for Parameter "
                                    r"max_depth should be greater equal to 0$"),
    ({"num_boost_round": "5"}, r"^num_boost_round must be an integer >= 1, got '5'$"),
    ({"validation_fraction": "0.2"}, r"^validation_fraction must be a number in \[0, 1\)"),
])
def test_options_xgboost_would_ignore_or_refuse_are_configuration_errors(
    options: dict[str, Any], message: str, cancer: Loaded,
) -> None:
    """The adapter trains with verbosity 0, which silenced XGBoost's "not used" warning: a
    misspelt option was ignored, and a bad value failed every client in round 1."""
    with pytest.raises(ConfigError, match=message):
        XGBoostBaggingAdapter(cancer[2], **options)


def test_checking_the_options_accepts_every_documented_kind_of_setting(cancer: Loaded) -> None:
    adapter = XGBoostBaggingAdapter(cancer[2], params={"max_depth": 3, "eta": "0.3",
                                                       "subsample": 0.8})
    assert adapter.options["max_depth"] == 3
    regression = load_dataset("diabetes")[2]
    XGBoostBaggingAdapter(regression, params={"objective": "reg:squarederror"})


def _job(clients: int, dataset: str = "breast_cancer", **params: Any) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": f"boosters-{clients}", "rounds": 1,
        "data": {"dataset": dataset, "partition": "iid"}, "clients": {"count": clients},
        "model": {"type": "xgboost-bagging", "params": {"num_boost_round": 20, **params}},
        "aggregator": "tree-bagging",
    })


async def test_ten_bagged_boosters_score_within_two_points_of_one_central_booster() -> None:
    # the central booster keeps XGBoost's own defaults, not the adapter's federated ones
    xgboost_defaults = {k: 1.0 for k in FEDERATED_DEFAULTS}
    central = await run_job(_job(1, params=xgboost_defaults))
    federated = await run_job(_job(10))
    assert all(r.status == "ok" and r.accepted == 10 for r in federated.history)
    assert federated.params["boosters/weight"].shape == (10,)
    gap = federated.final_metrics["accuracy"] - central.final_metrics["accuracy"]
    assert gap >= -0.02, (central.final_metrics, federated.final_metrics)


def test_the_federated_defaults_apply_unless_the_job_overrides_them(cancer: Loaded) -> None:
    spec = cancer[2]
    assert XGBoostBaggingAdapter(spec).options["colsample_bynode"] == 0.2
    assert XGBoostBaggingAdapter(spec, params={"colsample_bynode": 1.0}).options[
        "colsample_bynode"] == 1.0


async def test_a_bagged_booster_regressor_explains_diabetes_progression() -> None:
    result = await run_job(_job(4, "diabetes"))
    assert result.final_metrics["r2"] > 0.2  # predicting the mean gives 0


def test_a_reused_adapter_trains_exactly_like_a_fresh_one_after_begin_round(
    cancer: Loaded,
) -> None:
    train, _, spec = cancer
    first, second = train.subset(np.arange(0, 150)), train.subset(np.arange(150, 300))
    fresh = XGBoostBaggingAdapter(spec, num_boost_round=4)
    start = fresh.get_params()
    fresh.begin_round(7)
    fresh.fit(first)
    reused = XGBoostBaggingAdapter(spec, num_boost_round=4)
    reused.begin_round(3)
    reused.fit(second)
    reused.set_params(start)
    reused.begin_round(7)
    reused.fit(first)
    for name, value in fresh.get_params().items():
        np.testing.assert_array_equal(reused.get_params()[name], value)
