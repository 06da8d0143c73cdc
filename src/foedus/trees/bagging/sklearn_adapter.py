"""``sklearn-random-forest``, ``sklearn-extra-trees``: scikit-learn tree ensembles for federated
tree bagging.

Each client grows a local forest on its own rows; its *trees* are the update (packed into arrays
by :mod:`foedus.trees.bagging.packed_forest`). The server's ``tree-bagging`` aggregator
(:mod:`foedus.trees.bagging.aggregator`) merges trees from all clients into one global ensemble
and sends it back, where :meth:`set_params` validates it and rebuilds scikit-learn ``Tree``
objects to predict with. Calling :meth:`fit` first scores the received global ensemble on the
local data (``global_*`` metrics: that is how every client evaluates the merged model), then
grows a fresh local forest, seeded by :meth:`begin_round` (per client and round), so successive
rounds grow different trees.

Class distributions are re-indexed to the job's full label set, so a client that never saw
class 7 still sends trees whose leaves have a (zero) column for it. Each tree is scored on a
held-out ``validation_fraction`` of the client's rows (accuracy, or R^2 for regression) so the
server can weight or select trees by validation score. Defaults are the measured best for
bagging (``bench/models.py``): ``validation_fraction=0`` (every row grows trees; the scores are
then optimistic training scores, so set a hold-out when the aggregator selects or weights by
score) and, for random forests, ``bootstrap=False`` (the client split already samples the data).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate, require
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import (
    SKLEARN_LOCK,
    ModelAdapter,
    ensemble_metrics,
    hold_out,
    models,
    regression_metrics,
    sklearn_estimator,
)
from foedus.trees.bagging import packed_forest as packed
from foedus.trees.bagging.header import TASKS

_KINDS = ("random-forest", "extra-trees")


class TreeEnsembleAdapter(ModelAdapter):
    """A bagged tree ensemble whose trees travel as packed arrays (never pickles)."""

    update_kind = "tree-ensemble"

    def __init__(
        self, spec: DataSpec, *, kind: str = "random-forest", n_estimators: int = 10,
        seed: int = 0, validation_fraction: float = 0.0, **options: Any,
    ) -> None:
        require("sklearn", "sklearn")
        if kind not in _KINDS:
            raise ConfigError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        if isinstance(n_estimators, bool) or not isinstance(n_estimators, int) or n_estimators < 1:
            raise ConfigError(f"n_estimators must be an integer >= 1, got {n_estimators!r}")
        fraction = validation_fraction
        if (isinstance(fraction, bool) or not isinstance(fraction, int | float)
                or not 0 <= fraction < 1):
            raise ConfigError(f"validation_fraction must be a number in [0, 1), "
                              f"got {validation_fraction!r}")
        if spec.task not in TASKS:
            raise ConfigError(f"unsupported task {spec.task!r}; allowed: {TASKS}")
        if spec.task == "classification" and len(spec.classes) < 2:
            raise ConfigError(f"a classifier needs at least two classes, got {spec.classes}")
        self.spec = spec
        self.kind = kind
        self.n_estimators = n_estimators
        self.seed = seed
        self.validation_fraction = validation_fraction
        if kind == "random-forest":
            # each client already holds a different sample of the data; bootstrapping its ~1/10
            # again leaves every tree ~63 % of it (digits, 10 clients: 1.3 points better without)
            options.setdefault("bootstrap", False)
        self.options = options
        self.classes = np.asarray(spec.classes)
        self.n_values = len(self.classes) if spec.task == "classification" else 1
        self._round_seed = [seed, 0]
        self._estimator()  # fail early on a bad option name or value
        self._load(packed.empty(spec.n_features, self.n_values, spec.task))

    # ---- the contract ------------------------------------------------------------------
    def begin_round(self, seed: int) -> None:
        """Seed the round's hold-out split and tree randomness (client, round and job seed)."""
        self._round_seed = [seed, 0]

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.forest.to_params().items()}

    def set_params(self, params: Params) -> None:
        """Load a (merged) forest after validating every index; raises RejectedUpdate."""
        self._load(packed.unpack(
            params, n_features=self.spec.n_features, n_values=self.n_values, task=self.spec.task,
        ))

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        """Grow a fresh local forest (``epochs`` is unused: a forest is grown in one pass)."""
        metrics: dict[str, float] = {}
        if self.forest.n_trees:
            metrics.update({f"global_{k}": v for k, v in self.evaluate(data).items()})
        rng = np.random.default_rng(self._round_seed)
        train, val = hold_out(data, self.validation_fraction, rng)
        estimator = self._estimator(random_state=int(rng.integers(2**31 - 1)))
        with SKLEARN_LOCK:  # see SKLEARN_LOCK: scikit-learn's forests fit through Parallel
            estimator.fit(np.asarray(train.x, dtype=np.float32), train.y)
        local = self._export(estimator)
        self._load(local)
        outputs = self._tree_outputs(np.asarray(val.x))
        scores = np.array([self._score(out, val.y) for out in outputs])
        self._load(replace(local, score=scores))
        self._round_seed[-1] += 1  # without begin_round, the next fit still grows new trees
        metrics.update(self.evaluate(train))
        metrics["validation_score"] = float(scores.mean())
        return metrics

    def evaluate(self, data: Dataset) -> dict[str, float]:
        return ensemble_metrics(self.predict_values(np.asarray(data.x)), data.y,
                                self.spec.task, self.classes)

    # ---- prediction ----------------------------------------------------------------------
    def predict_values(self, x: np.ndarray) -> np.ndarray:
        """Weighted mean of the trees' outputs: class probabilities, or ``(n, 1)`` predictions.

        An ensemble without trees predicts uniform probabilities (or zero): what a model that
        has learned nothing knows.
        """
        weight = self.forest.weight
        if not self.forest.n_trees or weight.sum() <= 0:
            fill = 1.0 / self.n_values if self.spec.task == "classification" else 0.0
            return np.full((len(x), self.n_values), fill)
        outputs = self._tree_outputs(x)
        return np.asarray(np.tensordot(weight / weight.sum(), outputs, axes=1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        values = self.predict_values(x)
        if self.spec.task == "classification":
            return np.asarray(self.classes[np.argmax(values, axis=1)])
        return values[:, 0]

    # ---- internals -----------------------------------------------------------------------
    def _estimator(self, random_state: int = 0) -> Any:
        from sklearn import ensemble

        suffix = "Classifier" if self.spec.task == "classification" else "Regressor"
        prefix = "RandomForest" if self.kind == "random-forest" else "ExtraTrees"
        cls = getattr(ensemble, prefix + suffix)
        return sklearn_estimator(cls, n_estimators=self.n_estimators, random_state=random_state,
                                 n_jobs=1, **self.options)

    def _export(self, estimator: Any) -> packed.PackedForest:
        """Fitted scikit-learn trees -> packed arrays, class columns in the job's label order."""
        if self.spec.task == "classification":
            columns = np.searchsorted(self.classes, estimator.classes_)
            if (self.classes[np.clip(columns, 0, len(self.classes) - 1)]
                    != estimator.classes_).any():
                raise ConfigError(
                    f"labels {estimator.classes_.tolist()} are not all in the job's classes "
                    f"{self.classes.tolist()}"
                )
        parts = []
        for est in estimator.estimators_:
            tree = est.tree_
            n = tree.node_count
            raw = np.asarray(tree.value)[:, 0, :]
            if self.spec.task == "classification":
                value = np.zeros((n, self.n_values))
                totals = raw.sum(axis=1, keepdims=True)
                value[:, columns] = raw / np.where(totals > 0, totals, 1.0)
            else:
                value = raw.astype(np.float64).reshape(n, 1)
            left = np.asarray(tree.children_left, dtype=np.int64)
            leaf = left == packed.LEAF
            feature = np.where(leaf, packed.UNDEFINED, tree.feature).astype(np.int64)
            threshold = np.where(leaf, float(packed.UNDEFINED), tree.threshold)
            missing = getattr(tree, "missing_go_to_left", np.zeros(n, dtype=np.uint8))
            parts.append(packed.PackedForest(
                self.spec.n_features, self.n_values, self.spec.task,
                np.array([0, n], dtype=np.int64), left,
                np.asarray(tree.children_right, dtype=np.int64), feature,
                threshold.astype(np.float64), np.asarray(missing, dtype=np.uint8), value,
                np.ones(1), np.zeros(1),
            ))
        forest = packed.concat(parts)
        return replace(forest, weight=np.full(forest.n_trees, 1.0 / forest.n_trees))

    def _load(self, forest: packed.PackedForest) -> None:
        self.forest = forest
        self._trees = [_build_tree(forest, t, d) for t, d in enumerate(forest.depths())]

    def _tree_outputs(self, x: np.ndarray) -> np.ndarray:
        """Each tree's output, shape ``(trees, rows, n_values)``."""
        if x.ndim != 2 or x.shape[1] != self.spec.n_features:
            raise ConfigError(f"expected data with {self.spec.n_features} features, "
                              f"got shape {x.shape}")
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        return np.stack([tree.predict(x32).reshape(len(x32), -1) for tree in self._trees])

    def _score(self, output: np.ndarray, y: np.ndarray) -> float:
        if self.spec.task == "classification":
            return float(np.mean(self.classes[np.argmax(output, axis=1)] == y))
        r2 = regression_metrics(output[:, 0], y)["r2"]
        return r2 if np.isfinite(r2) else 0.0


def _build_tree(forest: packed.PackedForest, t: int, depth: int) -> Any:
    """A scikit-learn ``Tree`` from validated arrays.

    ``sklearn.tree._tree.Tree`` is scikit-learn's own node store (what its estimators pickle);
    its node record layout is read from an empty Tree, so a changed layout fails loudly here
    instead of being misread. Only prediction fields are filled: impurities and sample counts
    are not sent, so the trees leak less about each client's data.
    """
    from sklearn.tree._tree import Tree

    arrays = forest.tree(t)
    n = len(arrays["left"])
    tree = Tree(forest.n_features, np.array([forest.n_values], dtype=np.intp), 1)
    dtype = tree.__getstate__()["nodes"].dtype
    needed = {"left_child", "right_child", "feature", "threshold"}
    if not needed <= set(dtype.names or ()):
        raise RejectedUpdate("bad_forest", f"scikit-learn's tree layout changed: {dtype}")
    nodes = np.zeros(n, dtype=dtype)
    nodes["left_child"] = arrays["left"]
    nodes["right_child"] = arrays["right"]
    nodes["feature"] = arrays["feature"]
    nodes["threshold"] = arrays["threshold"]
    if "missing_go_to_left" in dtype.names:
        nodes["missing_go_to_left"] = arrays["missing_left"]
    for name in ("n_node_samples", "weighted_n_node_samples"):
        if name in dtype.names:
            nodes[name] = 1
    values = np.ascontiguousarray(arrays["value"], dtype=np.float64).reshape(n, 1, -1)
    tree.__setstate__({"max_depth": int(depth), "node_count": n, "nodes": nodes,
                       "values": values})
    return tree


def _factory(kind: str) -> Any:
    def build(spec: DataSpec, seed: int = 0, **options: Any) -> TreeEnsembleAdapter:
        return TreeEnsembleAdapter(spec, kind=kind, seed=seed, **options)

    build.__doc__ = (f"scikit-learn {kind.replace('-', ' ')} (classifier or regressor, from the "
                     "dataset's task) for the tree-bagging aggregator.")
    return build


models.register("sklearn-random-forest")(_factory("random-forest"))
models.register("sklearn-extra-trees")(_factory("extra-trees"))
