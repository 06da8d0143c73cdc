"""Tree bagging merges clients' trees into one ensemble, capped and weighted as configured."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from foedus.aggregate.base import aggregators
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.trees.bagging import packed_forest as packed
from foedus.trees.bagging.aggregator import TreeBagging


def stumps(scores: list[float], feature: int = 0) -> packed.PackedForest:
    """One stump per score over 2 features / 2 classes; the stump's threshold encodes its score
    so tests can tell trees apart after merging."""
    n = len(scores)
    return packed.PackedForest(
        2, 2, "classification", np.arange(0, 3 * n + 1, 3),
        np.tile([1, -1, -1], n), np.tile([2, -1, -1], n), np.tile([feature, -2, -2], n),
        np.concatenate([[s, -2.0, -2.0] for s in scores]), np.zeros(3 * n, dtype=np.uint8),
        np.tile([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], (n, 1)), np.full(n, 1.0 / n),
        np.array(scores, dtype=float),
    )


def update(forest: packed.PackedForest, examples: int, sender: str = "c") -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender,
                          params=forest.to_params(), num_examples=examples)


def merged(agg: TreeBagging, *updates: Message) -> packed.PackedForest:
    agg.reset(packed.empty(2, 2, "classification").to_params())
    for u in updates:
        agg.accept(u)
    return packed.unpack(agg.result())


def test_tree_bagging_is_registered_and_says_it_is_not_streaming() -> None:
    assert isinstance(aggregators.create("tree-bagging"), TreeBagging)
    assert TreeBagging.streaming is False


def test_without_a_cap_every_tree_of_every_client_is_kept_with_normalised_votes() -> None:
    out = merged(TreeBagging(), update(stumps([.1, .2]), 10), update(stumps([.3, .4, .5]), 30))
    assert out.n_trees == 5
    np.testing.assert_allclose(out.score, [.1, .2, .3, .4, .5])
    np.testing.assert_allclose(out.weight, np.full(5, 0.2))


def test_the_cap_is_shared_in_proportion_to_sample_counts_best_trees_first() -> None:
    agg = TreeBagging(max_trees=4, select="samples")
    out = merged(agg, update(stumps([.1, .9, .5, .7]), 10), update(stumps([.2, .3, .8, .6]), 30))
    assert out.n_trees == 4
    # 10:30 of a cap of 4 -> 1 tree from the small client (its best), 3 from the large one
    assert sorted(out.score.tolist()) == [.3, .6, .8, .9]


def test_selection_by_score_keeps_the_best_trees_whoever_sent_them() -> None:
    out = merged(TreeBagging(max_trees=3, select="score"),
                 update(stumps([.1, .95, .5]), 10), update(stumps([.2, .9, .8]), 10))
    assert sorted(out.score.tolist()) == [.8, .9, .95]


def test_random_selection_is_seeded() -> None:
    a = merged(TreeBagging(max_trees=3, select="random", seed=1), update(stumps([.1, .2, .3, .4,
                                                                                .5]), 5))
    b = merged(TreeBagging(max_trees=3, select="random", seed=1), update(stumps([.1, .2, .3, .4,
                                                                                .5]), 5))
    np.testing.assert_array_equal(a.score, b.score)
    assert a.n_trees == 3


def test_min_score_drops_weak_trees() -> None:
    out = merged(TreeBagging(min_score=0.5), update(stumps([.1, .6, .4, .9]), 10))
    assert sorted(out.score.tolist()) == [.6, .9]


def test_sample_weighting_gives_each_client_a_vote_proportional_to_its_examples() -> None:
    out = merged(TreeBagging(weight="samples"), update(stumps([.1, .2]), 10),
                 update(stumps([.3]), 30))
    np.testing.assert_allclose(out.weight, [5 / 40, 5 / 40, 30 / 40])


def test_score_weighting_gives_better_trees_more_votes() -> None:
    out = merged(TreeBagging(weight="score"), update(stumps([.2, .6]), 10))
    np.testing.assert_allclose(out.weight, [.25, .75])


def test_keep_previous_grows_the_forest_and_the_cap_drops_the_oldest_trees() -> None:
    agg = TreeBagging(max_trees=3, keep_previous=True)
    first = merged(agg, update(stumps([.1, .2]), 10))
    agg.reset(first.to_params())
    agg.accept(update(stumps([.3, .4]), 10))
    out = packed.unpack(agg.result())
    assert out.score.tolist() == [.2, .3, .4]
    np.testing.assert_allclose(out.weight.sum(), 1.0)


def test_updates_for_another_schema_or_without_trees_are_rejected() -> None:
    agg = TreeBagging()
    agg.reset(packed.empty(2, 2, "classification").to_params())
    wrong_features = replace(stumps([.5]), n_features=5)
    with pytest.raises(RejectedUpdate) as info:
        agg.accept(update(wrong_features, 10))
    assert info.value.reason == "wrong_shape"
    with pytest.raises(RejectedUpdate) as info:
        agg.accept(update(packed.empty(2, 2, "classification"), 10))
    assert info.value.reason == "no_trees"
    with pytest.raises(RejectedUpdate) as info:
        agg.accept(update(stumps([.5]), 0))
    assert info.value.reason == "no_examples"
    with pytest.raises(RejectedUpdate) as info:
        agg.result()
    assert info.value.reason == "no_updates"


def test_a_model_that_is_not_a_forest_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="tree-ensemble model"):
        TreeBagging().reset({"coef": np.zeros((2, 2))})


@pytest.mark.parametrize("kwargs", [{"max_trees": 0}, {"select": "best"}, {"weight": "x"}])
def test_bad_options_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TreeBagging(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_score": "0.5"}, r"^min_score: expected a number, got '0.5'$"),
    ({"keep_previous": "no"}, r"^keep_previous: expected true or false, got 'no'$"),
    ({"seed": "1"}, r"^seed: expected an integer >= 0, got '1'$"),
])
def test_mistyped_options_are_refused_naming_them(kwargs: dict[str, object],
                                                  message: str) -> None:
    """A string min_score failed the round at its first comparison (every client's trees
    lost); keep_previous: "no" was taken as true."""
    with pytest.raises(ConfigError, match=message):
        TreeBagging(**kwargs)  # type: ignore[arg-type]


def _boosters(scores: list[float]) -> Any:
    """One tiny XGBoost booster per score (2 features, 2 classes), trained on distinct data."""
    xgboost = pytest.importorskip("xgboost")
    from foedus.trees.bagging import packed_boosters as boosters

    rng = np.random.default_rng(0)
    blobs = []
    for i, _ in enumerate(scores):
        x = rng.normal(size=(40, 2)) + i
        booster = xgboost.train({"objective": "multi:softprob", "num_class": 2, "nthread": 1,
                                 "max_depth": 2}, xgboost.DMatrix(x, x[:, 0] > i), 2)
        blobs.append(bytes(booster.save_raw("json")))
    return boosters.from_models(2, 2, "classification", blobs, score=np.array(scores))


def test_xgboost_boosters_are_bagged_capped_and_selected_like_trees() -> None:
    from foedus.trees.bagging import packed_boosters as boosters

    first, second = _boosters([.2, .9]), _boosters([.5])
    agg = TreeBagging(max_trees=2, select="score")
    agg.reset(boosters.empty(2, 2, "classification").to_params())
    agg.accept(update_params(first.to_params(), 10))
    agg.accept(update_params(second.to_params(), 10))
    out = boosters.unpack(agg.result())
    assert out.n_trees == 2
    np.testing.assert_allclose(sorted(out.score), [.5, .9])
    np.testing.assert_allclose(out.weight, [.5, .5])
    assert out.booster_bytes(0) == first.booster_bytes(1)  # the merged order keeps arrival order


def test_an_update_of_the_other_ensemble_kind_is_refused() -> None:
    from foedus.trees.bagging import packed_boosters as boosters

    agg = TreeBagging()
    agg.reset(boosters.empty(2, 2, "classification").to_params())
    with pytest.raises(RejectedUpdate) as info:
        agg.accept(update(stumps([.5]), 10))
    assert info.value.reason == "wrong_names"
    garbled = _boosters([.5]).to_params()
    garbled["boosters/model"] = garbled["boosters/model"][::-1].copy()
    with pytest.raises(RejectedUpdate) as info:
        agg.accept(update_params(garbled, 10))
    assert info.value.reason == "bad_booster"


def update_params(params: dict[str, np.ndarray], examples: int) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender="c", params=params,
                          num_examples=examples)


def test_tree_bagging_through_a_tree_of_edges_keeps_every_clients_trees() -> None:
    from foedus.config.spec import JobSpec
    from foedus.runner import run_job_sync

    job: dict[str, Any] = {
        "job_id": "bagging-tree", "seed": 0, "rounds": 1,
        "data": {"dataset": "breast_cancer", "partition": "iid"}, "clients": {"count": 4},
        "model": {"type": "sklearn-random-forest", "params": {"n_estimators": 3}},
        "aggregator": "tree-bagging",
    }
    flat = run_job_sync(JobSpec.from_dict(job))
    tree = run_job_sync(JobSpec.from_dict(job | {"topology": {"type": "hierarchical", "params": {
        "tree": [{"edge": "a", "children": ["client-000", "client-001"]},
                 {"edge": "b", "children": ["client-002", "client-003"]}]}}}))
    def trees(forest: packed.PackedForest) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        cuts = zip(forest.offsets[:-1], forest.offsets[1:], strict=True)
        return sorted((tuple(forest.feature[lo:hi]), tuple(forest.threshold[lo:hi]))
                      for lo, hi in cuts)

    flat_forest, tree_forest = (packed.unpack(r.params) for r in (flat, tree))
    assert flat_forest.n_trees == tree_forest.n_trees == 4 * 3
    assert trees(tree_forest) == trees(flat_forest)  # the same trees, merged in another order
    np.testing.assert_allclose(tree_forest.weight, flat_forest.weight)
    # (accuracy may differ: 12 equal votes can tie, and the order of the sum breaks the tie)
    assert tree.final_metrics["loss"] == pytest.approx(flat.final_metrics["loss"], rel=1e-9)
