"""Packed XGBoost boosters: the wire format of booster bagging, checkable without XGBoost.

Boosting is sequential (each tree corrects the ones before it), so boosters from different
clients cannot be merged tree by tree. They are *bagged* instead: every client boosts on its own
rows (:mod:`foedus.trees.bagging.xgboost_adapter`), and the global model is the weighted average
of the boosters' predictions. The server's ``tree-bagging`` aggregator
(:mod:`foedus.trees.bagging.aggregator`) merges, caps, selects and weighs boosters exactly as it
does trees; for ``max_trees`` one booster counts as one member.

On the wire an ensemble of boosters is five arrays, whatever its size::

    boosters/meta    int64 (4,)    [format version, n_features, n_values, task code]
    boosters/offsets int64 (B+1,)  booster b is bytes offsets[b] .. offsets[b+1]-1 of model
    boosters/model   uint8 (N,)    the boosters' XGBoost JSON models, concatenated
    boosters/weight  float64 (B,)  each booster's vote in the ensemble
    boosters/score   float64 (B,)  each booster's validation score on its client

Nothing is pickled. XGBoost's own JSON model format is used because the server can parse it
with the standard library (no XGBoost needed to aggregate) and check it before anyone loads it
into XGBoost's C++ predictor: the schema (features, classes, objective), and every tree's
structure (children in range and after their parent, one parent per node, split features in
range, finite numbers, no categorical splits).

This module imports numpy and the standard library only, so the aggregator can use it on a
server without the ``xgboost`` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from foedus.core.errors import RejectedUpdate
from foedus.core.params import Params
from foedus.trees.bagging.header import FORMAT_VERSION, TASKS, check_meta

#: one hostile update must not exhaust memory; a 100-round, 10-class depth-6 booster is ~10 MB
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
NAMES = tuple(f"boosters/{n}" for n in ("meta", "offsets", "model", "weight", "score"))
#: objectives whose predictions the adapter knows how to average (class probabilities / values)
OBJECTIVES = {
    "classification": ("multi:softprob",),
    "regression": ("reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"),
}
_ROOT_PARENT = 2147483647  # XGBoost's marker for "no parent"


@dataclass(frozen=True)
class PackedBoosters:
    """A validated ensemble of boosters (build with :func:`unpack`, :func:`empty`, :func:`concat`).

    The interface matches :class:`foedus.trees.bagging.packed_forest.PackedForest` (``n_trees``
    counts ensemble members, here boosters), so the tree-bagging aggregator handles both.
    """

    n_features: int
    n_values: int
    task: str
    offsets: np.ndarray
    model: np.ndarray
    weight: np.ndarray
    score: np.ndarray

    @property
    def n_trees(self) -> int:
        return len(self.offsets) - 1

    def booster_bytes(self, b: int) -> bytes:
        return self.model[int(self.offsets[b]):int(self.offsets[b + 1])].tobytes()

    def to_params(self) -> dict[str, np.ndarray]:
        meta = np.array(
            [FORMAT_VERSION, self.n_features, self.n_values, TASKS.index(self.task)],
            dtype=np.int64,
        )
        arrays = (meta, self.offsets, self.model, self.weight, self.score)
        return dict(zip(NAMES, arrays, strict=True))

    def select(self, members: np.ndarray, weight: np.ndarray | None = None) -> PackedBoosters:
        """The boosters at indices ``members`` (in that order), optionally re-weighted."""
        members = np.asarray(members, dtype=np.int64)
        blobs = [self.model[self.offsets[b]:self.offsets[b + 1]] for b in members]
        return PackedBoosters(
            self.n_features, self.n_values, self.task, _offsets([len(b) for b in blobs]),
            np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8),
            self.weight[members] if weight is None else np.asarray(weight, dtype=np.float64),
            self.score[members],
        )


def empty(n_features: int, n_values: int, task: str) -> PackedBoosters:
    """An ensemble without boosters: the initial global model of a booster-bagging job."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    f = np.zeros(0, dtype=np.float64)
    return PackedBoosters(n_features, n_values, task, np.zeros(1, dtype=np.int64),
                          np.zeros(0, dtype=np.uint8), f, f.copy())


def from_models(
    n_features: int, n_values: int, task: str, blobs: list[bytes],
    weight: np.ndarray | None = None, score: np.ndarray | None = None,
) -> PackedBoosters:
    """Pack serialized boosters (JSON bytes) without validating them; see :func:`unpack`."""
    n = len(blobs)
    return PackedBoosters(
        n_features, n_values, task, _offsets([len(b) for b in blobs]),
        np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(),
        np.full(n, 1.0 / max(n, 1)) if weight is None else np.asarray(weight, dtype=np.float64),
        np.zeros(n) if score is None else np.asarray(score, dtype=np.float64),
    )


def concat(ensembles: list[PackedBoosters]) -> PackedBoosters:
    """All boosters of ``ensembles`` in order; they must share features, value width and task."""
    if not ensembles:
        raise ValueError("concat needs at least one ensemble")
    first = ensembles[0]
    for e in ensembles[1:]:
        if (e.n_features, e.n_values, e.task) != (first.n_features, first.n_values, first.task):
            raise ValueError("ensembles differ in features, value width or task")
    return PackedBoosters(
        first.n_features, first.n_values, first.task,
        _offsets([int(s) for e in ensembles for s in np.diff(e.offsets)]),
        np.concatenate([e.model for e in ensembles]),
        np.concatenate([e.weight for e in ensembles]),
        np.concatenate([e.score for e in ensembles]),
    )


def is_boosters(params: Params) -> bool:
    return "boosters/meta" in params


def unpack(
    params: Params, *, n_features: int | None = None, n_values: int | None = None,
    task: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
) -> PackedBoosters:
    """Validate untrusted arrays, including every booster's model; raises RejectedUpdate."""
    got_features, got_values, got_task = check_meta(
        params, NAMES, "boosters", "bad_booster", n_features=n_features, n_values=n_values,
        task=task)
    if got_task == "classification" and got_values < 2:
        raise RejectedUpdate("bad_booster", "classification needs at least 2 values")
    offsets = _array(params, "offsets", "iu", 1).astype(np.int64)
    model = _array(params, "model", "u", 1)
    if model.dtype != np.uint8:
        raise RejectedUpdate("bad_booster", "boosters/model must be a uint8 array")
    if len(model) > max_bytes:
        raise RejectedUpdate("too_large", f"{len(model)} bytes exceed the limit of {max_bytes}")
    if (len(offsets) < 1 or offsets[0] != 0 or (np.diff(offsets) < 1).any()
            or offsets[-1] != len(model)):
        raise RejectedUpdate("bad_booster", "boosters/offsets must start at 0, strictly increase "
                                            "and end at the length of boosters/model")
    n = len(offsets) - 1
    weight = _array(params, "weight", "f", 1).astype(np.float64)
    score = _array(params, "score", "f", 1).astype(np.float64)
    if weight.shape != (n,) or score.shape != (n,):
        raise RejectedUpdate("bad_booster", f"boosters/weight and boosters/score need shape ({n},)")
    if not (np.isfinite(weight).all() and np.isfinite(score).all()):
        raise RejectedUpdate("not_finite", "booster weights or scores contain NaN or Inf")
    if (weight < 0).any():
        raise RejectedUpdate("bad_booster", "booster weights must be non-negative")
    ensemble = PackedBoosters(got_features, got_values, got_task, offsets, model.copy(), weight,
                              score)
    for b in range(n):
        try:
            check_model(ensemble.booster_bytes(b), got_features, got_values, got_task)
        except RejectedUpdate as exc:
            raise RejectedUpdate(exc.reason, f"booster {b}: {exc.detail}") from exc
    return ensemble


def check_model(raw: bytes, n_features: int, n_values: int, task: str) -> dict[str, Any]:
    """Parse one booster's JSON and check it before XGBoost ever sees it; returns the dict."""
    def no_constants(name: str) -> None:
        raise ValueError(f"non-finite number {name}")

    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
        learner = doc["learner"]
        param = learner["learner_model_param"]
        objective = learner["objective"]["name"]
        booster = learner["gradient_booster"]
        trees = booster["model"]["trees"]
        tree_info = booster["model"]["tree_info"]
        num_feature, num_class = int(param["num_feature"]), int(param["num_class"])
        num_trees = int(booster["model"]["gbtree_model_param"]["num_trees"])
        base_score = json.loads(param["base_score"])
    except RejectedUpdate:
        raise
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise RejectedUpdate("bad_booster", f"not an XGBoost JSON model: {exc!r}") from exc
    if booster.get("name") != "gbtree":
        raise RejectedUpdate("bad_booster", f"only gbtree boosters, got {booster.get('name')!r}")
    if objective not in OBJECTIVES[task]:
        raise RejectedUpdate("bad_booster", f"objective {objective!r} not allowed for {task}; "
                                            f"allowed: {OBJECTIVES[task]}")
    want_class = n_values if task == "classification" else 0
    if num_feature != n_features or num_class != want_class:
        raise RejectedUpdate("wrong_shape", f"booster has {num_feature} features and "
                                            f"{num_class} classes, expected {n_features} and "
                                            f"{want_class}")
    if not isinstance(trees, list) or not isinstance(tree_info, list) or len(trees) != num_trees \
            or len(tree_info) != num_trees:
        raise RejectedUpdate("bad_booster", "tree list, tree_info and num_trees disagree")
    groups = max(num_class, 1)
    if any(not isinstance(g, int) or not 0 <= g < groups for g in tree_info):
        raise RejectedUpdate("bad_booster", f"tree_info must name output groups in [0, {groups})")
    if not np.isfinite(np.asarray(base_score, dtype=np.float64)).all():
        raise RejectedUpdate("not_finite", "base_score is not finite")
    for t, tree in enumerate(trees):
        try:
            _check_tree(tree, n_features)
        except (KeyError, TypeError, ValueError) as exc:
            raise RejectedUpdate("bad_booster", f"tree {t} is malformed: {exc!r}") from exc
        except RejectedUpdate as exc:
            raise RejectedUpdate(exc.reason, f"tree {t}: {exc.detail}") from exc
    return dict(doc)


def _check_tree(tree: dict[str, Any], n_features: int) -> None:
    """One XGBoost tree is a proper binary tree over known features with finite numbers."""
    n = int(tree["tree_param"]["num_nodes"])
    if int(tree["tree_param"]["num_deleted"]) != 0 or tree["tree_param"]["size_leaf_vector"] \
            not in ("1", "0"):
        raise RejectedUpdate("bad_booster", "deleted nodes or vector leaves are not supported")
    arrays = {k: np.asarray(tree[k]) for k in (
        "left_children", "right_children", "parents", "split_indices", "split_conditions",
        "base_weights", "default_left", "split_type")}
    for name, array in arrays.items():
        if array.shape != (n,) or (n and array.dtype.kind not in "iuf"):
            raise RejectedUpdate("bad_booster", f"{name} must be {n} numbers")
    if n < 1:
        raise RejectedUpdate("bad_booster", "a tree needs at least one node")
    if tree.get("categories_nodes"):
        raise RejectedUpdate("bad_booster", "categorical splits are not supported")
    for name in ("left_children", "right_children", "parents", "split_indices", "default_left",
                 "split_type"):
        if arrays[name].dtype.kind not in "iu":
            raise RejectedUpdate("bad_booster", f"{name} must be integers")
    for name in ("split_conditions", "base_weights"):
        if not np.isfinite(arrays[name].astype(np.float64)).all():
            raise RejectedUpdate("not_finite", f"{name} contains NaN or Inf")
    left = arrays["left_children"].astype(np.int64)
    right = arrays["right_children"].astype(np.int64)
    leaf = left == -1
    if (leaf != (right == -1)).any():
        raise RejectedUpdate("bad_booster", "a node has exactly one child")
    inner = np.flatnonzero(~leaf)
    for child in (left[inner], right[inner]):
        if ((child <= inner) | (child >= n)).any():  # after the parent: walks terminate
            raise RejectedUpdate("bad_booster", "a child lies outside the tree or before its "
                                                "parent")
    parents = np.bincount(np.concatenate([left[inner], right[inner]]), minlength=n)
    if parents[0] != 0 or (parents[1:] != 1).any():
        raise RejectedUpdate("bad_booster", "every node but the root needs exactly one parent")
    declared = arrays["parents"].astype(np.int64)
    expect = np.full(n, _ROOT_PARENT, dtype=np.int64)
    expect[left[inner]] = inner
    expect[right[inner]] = inner
    if (declared != expect).any():
        raise RejectedUpdate("bad_booster", "parents disagree with the children lists")
    feature = arrays["split_indices"].astype(np.int64)[inner]
    if ((feature < 0) | (feature >= n_features)).any():
        raise RejectedUpdate("bad_booster", f"a split feature is outside [0, {n_features})")
    if (arrays["split_type"] != 0).any() or ((arrays["default_left"] != 0)
                                             & (arrays["default_left"] != 1)).any():
        raise RejectedUpdate("bad_booster", "split_type must be 0 (numeric), default_left 0/1")


def _offsets(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def _array(params: Params, name: str, kinds: str, ndim: int) -> np.ndarray:
    array = np.asarray(params[f"boosters/{name}"])
    if array.dtype.kind not in kinds or array.ndim != ndim:
        raise RejectedUpdate("bad_booster", f"boosters/{name} must be a {ndim}-D array of kind "
                                            f"{kinds!r}, got {array.dtype} {array.shape}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise RejectedUpdate("bad_booster", f"boosters/{name} has out-of-range values")
    return array
