"""Packed scikit-learn trees: a forest as a handful of named numpy arrays, the wire format of
federated tree bagging.

Trees are not fixed-shape tensors, so parameter averaging does not apply to them; instead every
client sends its trees and the server merges them into one ensemble. On the wire a forest is
*packed*: the nodes of all trees are concatenated, and ``forest/offsets`` says where each tree
starts. A forest of any size is therefore always the same ten arrays, whatever the number of
trees::

    forest/meta         int64 (4,)    [format version, n_features, n_values, task code]
    forest/offsets      int64 (T+1,)  tree t owns nodes offsets[t] .. offsets[t+1]-1
    forest/left         int64 (N,)    left child, local to its tree; -1 for a leaf
    forest/right        int64 (N,)    right child, local to its tree; -1 for a leaf
    forest/feature      int64 (N,)    feature tested by an internal node; -2 for a leaf
    forest/threshold    float64 (N,)  go left when x[feature] <= threshold
    forest/missing_left uint8 (N,)    1: a missing (NaN) value goes left
    forest/value        float64 (N, K) class distribution (K classes) or prediction (K = 1)
    forest/weight       float64 (T,)  each tree's vote in the ensemble
    forest/score        float64 (T,)  each tree's validation score on its client (accuracy/R^2)

Nothing is pickled: a pickled estimator from an untrusted party would run code when loaded.
Because scikit-learn's C tree walker trusts its node indices, :func:`unpack` validates every
structural property before anything is rebuilt: children lie inside their own tree and after
their parent (so walks terminate), each node has exactly one parent, features are in range and
all numbers are finite. This module needs numpy only, so the server-side aggregator can use it
without any ML framework installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foedus.core.errors import RejectedUpdate
from foedus.core.params import Params
from foedus.trees.bagging.header import FORMAT_VERSION, TASKS, check_meta

LEAF = -1
UNDEFINED = -2
#: a generous bound against memory exhaustion by one hostile update (about 0.7 GB at K=10)
DEFAULT_MAX_NODES = 10_000_000

NAMES = tuple(
    f"forest/{n}" for n in (
        "meta", "offsets", "left", "right", "feature", "threshold", "missing_left", "value",
        "weight", "score",
    )
)


@dataclass(frozen=True)
class PackedForest:
    """A validated forest (build with :func:`unpack`, :func:`empty` or :func:`concat`)."""

    n_features: int
    n_values: int
    task: str
    offsets: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    score: np.ndarray

    @property
    def n_trees(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_nodes(self) -> int:
        return int(self.offsets[-1])

    def tree(self, t: int) -> dict[str, np.ndarray]:
        """The node arrays of tree ``t`` (views)."""
        lo, hi = int(self.offsets[t]), int(self.offsets[t + 1])
        return {
            "left": self.left[lo:hi], "right": self.right[lo:hi],
            "feature": self.feature[lo:hi], "threshold": self.threshold[lo:hi],
            "missing_left": self.missing_left[lo:hi], "value": self.value[lo:hi],
        }

    def depths(self) -> np.ndarray:
        """Maximum depth of each tree (a root-only tree has depth 0)."""
        return _depths(self.offsets, self.left, self.right)

    def to_params(self) -> dict[str, np.ndarray]:
        meta = np.array(
            [FORMAT_VERSION, self.n_features, self.n_values, TASKS.index(self.task)],
            dtype=np.int64,
        )
        arrays = (
            meta, self.offsets, self.left, self.right, self.feature, self.threshold,
            self.missing_left, self.value, self.weight, self.score,
        )
        return dict(zip(NAMES, arrays, strict=True))

    def select(self, trees: np.ndarray, weight: np.ndarray | None = None) -> PackedForest:
        """A forest of the trees at indices ``trees`` (in that order), optionally re-weighted."""
        trees = np.asarray(trees, dtype=np.int64)
        sizes = np.diff(self.offsets)[trees]
        nodes = (
            np.concatenate([np.arange(self.offsets[t], self.offsets[t + 1]) for t in trees])
            if len(trees) else np.zeros(0, dtype=np.int64)
        )
        return PackedForest(
            self.n_features, self.n_values, self.task,
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            self.left[nodes], self.right[nodes], self.feature[nodes], self.threshold[nodes],
            self.missing_left[nodes], self.value[nodes],
            self.weight[trees] if weight is None else np.asarray(weight, dtype=np.float64),
            self.score[trees],
        )


def empty(n_features: int, n_values: int, task: str) -> PackedForest:
    """A forest with no trees: the initial global model of a tree-bagging job."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    i, f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    return PackedForest(
        n_features, n_values, task, np.zeros(1, dtype=np.int64), i, i.copy(), i.copy(), f,
        np.zeros(0, dtype=np.uint8), np.zeros((0, n_values)), f.copy(), f.copy(),
    )


def concat(forests: list[PackedForest]) -> PackedForest:
    """All trees of ``forests`` in order; they must share features, value width and task."""
    if not forests:
        raise ValueError("concat needs at least one forest")
    first = forests[0]
    for f in forests[1:]:
        if (f.n_features, f.n_values, f.task) != (first.n_features, first.n_values, first.task):
            raise ValueError("forests differ in features, value width or task")
    sizes = np.concatenate([np.diff(f.offsets) for f in forests])
    return PackedForest(
        first.n_features, first.n_values, first.task,
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        *(np.concatenate([getattr(f, name) for f in forests]) for name in (
            "left", "right", "feature", "threshold", "missing_left", "value", "weight", "score",
        )),
    )


def is_forest(params: Params) -> bool:
    return "forest/meta" in params


def unpack(
    params: Params, *, n_features: int | None = None, n_values: int | None = None,
    task: str | None = None, max_nodes: int = DEFAULT_MAX_NODES,
) -> PackedForest:
    """Validate untrusted arrays and return the forest; raises :class:`RejectedUpdate`.

    ``n_features``, ``n_values`` and ``task``, when given, must match the forest's own meta.
    """
    got_features, got_values, got_task = check_meta(
        params, NAMES, "forest", "bad_forest", n_features=n_features, n_values=n_values,
        task=task)

    offsets = _ints(params, "offsets", 1)
    if len(offsets) < 1 or offsets[0] != 0 or (np.diff(offsets) < 1).any():
        raise RejectedUpdate("bad_forest", "forest/offsets must start at 0 and strictly increase")
    n_trees, n_nodes = len(offsets) - 1, int(offsets[-1])
    if n_nodes > max_nodes:
        raise RejectedUpdate("too_large", f"{n_nodes} nodes exceed the limit of {max_nodes}")
    left, right, feature = (_ints(params, k, 1) for k in ("left", "right", "feature"))
    threshold = _floats(params, "threshold", 1)
    value = _floats(params, "value", 2)
    weight, score = _floats(params, "weight", 1), _floats(params, "score", 1)
    missing_left = np.asarray(params["forest/missing_left"])
    if missing_left.dtype != np.uint8 or missing_left.ndim != 1:
        raise RejectedUpdate("bad_forest", "forest/missing_left must be a 1-D uint8 array")
    for name, array in (("left", left), ("right", right), ("feature", feature),
                        ("threshold", threshold), ("missing_left", missing_left)):
        if array.shape != (n_nodes,):
            raise RejectedUpdate("bad_forest", f"forest/{name} has shape {array.shape}, "
                                               f"expected ({n_nodes},)")
    if value.shape != (n_nodes, got_values):
        raise RejectedUpdate("bad_forest", f"forest/value has shape {value.shape}, expected "
                                           f"({n_nodes}, {got_values})")
    if weight.shape != (n_trees,) or score.shape != (n_trees,):
        raise RejectedUpdate("bad_forest", f"forest/weight and forest/score need shape "
                                           f"({n_trees},)")
    for name, array in (("threshold", threshold), ("value", value), ("weight", weight),
                        ("score", score)):
        if not np.isfinite(array).all():
            raise RejectedUpdate("not_finite", f"forest/{name} contains NaN or Inf")
    if (weight < 0).any():
        raise RejectedUpdate("bad_forest", "tree weights must be non-negative")
    if got_task == "classification" and (value < 0).any():
        raise RejectedUpdate("bad_forest", "class distributions must be non-negative")
    if (missing_left > 1).any():
        raise RejectedUpdate("bad_forest", "forest/missing_left must be 0 or 1")
    _check_structure(offsets, left, right, feature, got_features)
    return PackedForest(
        got_features, got_values, got_task, offsets, left, right, feature, threshold,
        missing_left.copy(), value, weight, score,
    )


def _check_structure(
    offsets: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
    n_features: int,
) -> None:
    """Every tree is a proper binary tree rooted at its first node, with valid features."""
    n_nodes = len(left)
    sizes = np.diff(offsets)
    tree_of = np.repeat(np.arange(len(sizes)), sizes)
    start = offsets[:-1][tree_of]
    local = np.arange(n_nodes) - start
    leaf = left == LEAF
    if (leaf != (right == LEAF)).any():
        raise RejectedUpdate("bad_forest", "a node has exactly one child")
    inner = ~leaf
    size = sizes[tree_of][inner]
    for name, child in (("left", left[inner]), ("right", right[inner])):
        # children after their parent: every walk moves forward and must end at a leaf
        if ((child <= local[inner]) | (child >= size)).any():
            raise RejectedUpdate("bad_forest", f"a {name} child lies outside its tree or "
                                               "before its parent")
    children = np.concatenate([left[inner], right[inner]]) + np.concatenate([start[inner]] * 2)
    parents = np.bincount(children, minlength=n_nodes)
    if (parents[local == 0] != 0).any() or (parents[local != 0] != 1).any():
        raise RejectedUpdate("bad_forest", "every node but a root needs exactly one parent")
    f = feature[inner]
    if ((f < 0) | (f >= n_features)).any():
        raise RejectedUpdate("bad_forest", f"a split feature is outside [0, {n_features})")
    if (feature[leaf] != UNDEFINED).any():
        raise RejectedUpdate("bad_forest", f"leaves must have feature {UNDEFINED}")


def _depths(offsets: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Level-by-level walk from the roots; assumes a structure that passed validation."""
    sizes = np.diff(offsets)
    depth = np.zeros(len(left), dtype=np.int64)
    start = np.repeat(offsets[:-1], sizes)
    frontier = offsets[:-1].copy()
    level = 0
    while len(frontier):
        depth[frontier] = level
        inner = frontier[left[frontier] != LEAF]
        frontier = np.concatenate([left[inner] + start[inner], right[inner] + start[inner]])
        level += 1
    tree_of = np.repeat(np.arange(len(sizes)), sizes)
    out = np.zeros(len(sizes), dtype=np.int64)
    np.maximum.at(out, tree_of, depth)
    return out


def _ints(params: Params, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(params[f"forest/{name}"])
    if array.dtype.kind not in "iu" or array.ndim != ndim:
        raise RejectedUpdate("bad_forest", f"forest/{name} must be a {ndim}-D integer array")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise RejectedUpdate("bad_forest", f"forest/{name} has out-of-range values")
    return array.astype(np.int64, copy=False)


def _floats(params: Params, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(params[f"forest/{name}"])
    if array.dtype.kind != "f" or array.ndim != ndim:
        raise RejectedUpdate("bad_forest", f"forest/{name} must be a {ndim}-D float array")
    return array.astype(np.float64, copy=False)
