"""The packed-forest wire format: trees round-trip as arrays, and hostile arrays are refused."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.errors import RejectedUpdate
from foedus.trees.bagging import packed_forest as packed


def stump_forest() -> packed.PackedForest:
    """Two trees over 3 features and 2 classes: a stump and a depth-2 tree."""
    left = np.array([1, -1, -1, 1, 2, -1, -1, -1])
    right = np.array([2, -1, -1, 4, 3, -1, -1, -1])
    feature = np.array([0, -2, -2, 2, 1, -2, -2, -2])
    threshold = np.array([0.5, -2, -2, 0.0, 1.0, -2, -2, -2], dtype=float)
    value = np.array([[.5, .5], [1, 0], [0, 1], [.5, .5], [.5, .5], [1, 0], [0, 1], [1, 0]])
    return packed.PackedForest(
        3, 2, "classification", np.array([0, 3, 8]), left, right, feature, threshold,
        np.zeros(8, dtype=np.uint8), value, np.array([0.5, 0.5]), np.array([0.9, 0.8]),
    )


def tampered(**changes: np.ndarray) -> dict[str, np.ndarray]:
    params = {k: np.array(v) for k, v in stump_forest().to_params().items()}
    params.update({f"forest/{k}": v for k, v in changes.items()})
    return params


def test_a_forest_round_trips_through_its_arrays() -> None:
    forest = stump_forest()
    back = packed.unpack(forest.to_params(), n_features=3, n_values=2, task="classification")
    assert back.n_trees == 2 and back.n_nodes == 8
    for name, array in forest.to_params().items():
        np.testing.assert_array_equal(back.to_params()[name], array)


def test_depths_are_computed_from_structure_not_trusted_from_the_sender() -> None:
    np.testing.assert_array_equal(stump_forest().depths(), [1, 2])


def test_select_and_concat_keep_each_tree_intact() -> None:
    forest = stump_forest()
    both = packed.concat([forest.select(np.array([1])), forest.select(np.array([0]))])
    assert both.n_trees == 2
    np.testing.assert_array_equal(both.tree(0)["left"], forest.tree(1)["left"])
    np.testing.assert_array_equal(both.tree(1)["value"], forest.tree(0)["value"])
    packed.unpack(both.to_params())  # still valid


def test_an_empty_forest_is_valid_and_has_no_trees() -> None:
    empty = packed.empty(4, 3, "classification")
    assert packed.unpack(empty.to_params()).n_trees == 0


@pytest.mark.parametrize(("changes", "reason"), [
    ({"left": np.array([1, -1, -1, 1, 2, -1, -1, 9])}, "bad_forest"),  # a leaf with one child
    ({"left": np.array([5, -1, -1, 1, 2, -1, -1, -1])}, "bad_forest"),  # child outside its tree
    ({"left": np.array([1, -1, -1, 1, 0, -1, -1, -1])}, "bad_forest"),  # child before parent
    ({"right": np.array([2, -1, -1, 2, 3, -1, -1, -1])}, "bad_forest"),  # two parents, orphan
    ({"feature": np.array([3, -2, -2, 2, 1, -2, -2, -2])}, "bad_forest"),  # feature out of range
    ({"threshold": np.array([np.nan, -2, -2, 0, 1, -2, -2, -2])}, "not_finite"),
    ({"value": -np.ones((8, 2))}, "bad_forest"),  # negative class distribution
    ({"offsets": np.array([0, 3, 3, 8])}, "bad_forest"),  # an empty tree
    ({"meta": np.array([99, 3, 2, 0])}, "bad_forest"),  # unknown format version
    ({"weight": np.array([0.5])}, "bad_forest"),  # one weight for two trees
    ({"threshold": np.zeros(8, dtype=np.int64)}, "bad_forest"),  # wrong dtype kind
])
def test_malformed_forests_are_rejected_with_a_reason(
    changes: dict[str, np.ndarray], reason: str
) -> None:
    with pytest.raises(RejectedUpdate) as info:
        packed.unpack(tampered(**changes))
    assert info.value.reason == reason


def test_a_forest_for_another_schema_is_rejected() -> None:
    with pytest.raises(RejectedUpdate, match="n_features"):
        packed.unpack(stump_forest().to_params(), n_features=4)
    with pytest.raises(RejectedUpdate, match="task"):
        packed.unpack(stump_forest().to_params(), task="regression")


def test_missing_or_extra_arrays_are_rejected() -> None:
    params = tampered()
    del params["forest/score"]
    with pytest.raises(RejectedUpdate, match="forest/score"):
        packed.unpack(params)
    with pytest.raises(RejectedUpdate, match="unexpected"):
        packed.unpack({**tampered(), "pickle": np.zeros(1)})


def test_oversized_forests_are_refused_before_their_nodes_are_read() -> None:
    with pytest.raises(RejectedUpdate) as info:
        packed.unpack(stump_forest().to_params(), max_nodes=5)
    assert info.value.reason == "too_large"


def test_random_corruption_is_either_refused_with_a_reason_or_yields_a_walkable_forest() -> None:
    rng = np.random.default_rng(0)
    for _ in range(400):
        params = tampered()
        name = str(rng.choice([n for n in params if n != "forest/meta"]))
        array = params[name].copy()
        if array.size:
            flat = array.reshape(-1)
            flat[rng.integers(flat.size)] = rng.choice([-3, -2, -1, 0, 1, 2, 7, 10**12])
        params[name] = array
        try:
            forest = packed.unpack(params)
        except RejectedUpdate:
            continue
        assert (forest.depths() < forest.n_nodes).all()  # every walk ends inside its tree
