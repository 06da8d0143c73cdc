"""Federated forest: ONE random forest grown by all clients together on summed histograms.

Tree bagging (:mod:`foedus.models.trees`) lets every client grow whole trees on its own rows, so
each split sees a tenth of the data and the merged forest falls short of a central one. Here the
forest is grown level by level, and every split is chosen on histograms summed over all clients,
as federated gradient-boosting systems do: each split sees every client's rows.

What a histogram bin holds (its *statistics*, the last axis of ``hist`` and ``value``):
classification: the bootstrap-weighted count of each class (Gini splits, class frequencies at
the leaves); regression: the weight, the weighted sum of the targets and of their squares,
``(w, w*y, w*y^2)`` (squared-error splits, the weighted mean at the leaves), in float64 so
that a node's variance is not lost to rounding.

The global model is a set of named arrays (the format is :func:`pack`/:func:`unpack`):

- ``settings``: the forest's options, so the server-side aggregator (``forest-histograms`` in
  :mod:`foedus.aggregate.histforest`) needs none of its own and cannot disagree with the model.
- ``edges``/``n_edges``: per-feature bin edges (a row goes to bin ``#edges <= x``).
- node arrays of all trees: ``left`` (children are ``left`` and ``left + 1``; -1 for a leaf or an
  open node), ``feature``, ``threshold`` (a row goes left iff ``x < threshold``), ``value``
  (the node's statistics) and ``depth``. Tree ``t``'s root is node ``t``.
- ``frontier``: the open nodes whose histograms the server asks for, ``candidates``: the features
  (in the server's random order) each open node may split on, ``constant``: the features known
  to be constant in each open node (found constant in an ancestor; they are drawn last).
- what clients fill in: ``hist`` (open node x candidate x bin x statistics) in growing rounds;
  ``sketch``/``distinct``/``exact`` (per-feature quantiles, distinct values) in the first round,
  from which the server derives the bin edges. Arrays a client does not fill go back unchanged.
  The broadcast's ``hist`` is an empty placeholder, ``(0, candidates, bins, statistics)``: its
  full shape follows from the frontier, and sending every client a histogram's worth of zeros
  would make the downlink as large as the uplink.

Bootstrap: each row's weight in tree ``t`` is Poisson(1), drawn from a keyed hash of (job seed,
tree, the row's contents). That is a central bootstrap in distribution (Poisson(1) is the
standard large-sample form of it), the same in every round without any client state, and
independent of which client holds a row or in which order: the forest does not depend on the
partition at all, only on the bin edges. Identical rows share their weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import (
    ModelAdapter,
    classification_metrics,
    models,
    regression_metrics,
)

FORMAT = 2  # format 2 added the ``regression`` setting; format 1 models are refused
#: the arrays of the global model, in order
NAMES = ("settings", "edges", "n_edges", "left", "feature", "threshold", "value", "depth",
         "frontier", "candidates", "constant", "hist", "sketch", "distinct", "exact")
#: the arrays a client fills in; every other array must come back unchanged
REPORTED = ("hist", "sketch", "distinct", "exact")
MAX_TREES = 100_000
MAX_BINS = 1024
#: regression statistics per bin: weight, weighted sum of targets, weighted sum of squares
REGRESSION_STATS = 3
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(32)])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Settings:
    """The options every party must agree on; they travel in the ``settings`` array."""

    n_features: int
    n_classes: int
    n_trees: int
    max_depth: int  # -1: unlimited
    min_samples_leaf: int
    max_features: int
    n_candidates: int
    max_bins: int
    bootstrap: int
    seed: int
    regression: int = 0  # 1: targets are numbers, n_classes is 0

    @property
    def n_stats(self) -> int:
        """Statistics per histogram bin and node: one per class, or (w, w*y, w*y^2)."""
        return REGRESSION_STATS if self.regression else self.n_classes

    @property
    def stats_dtype(self) -> type[np.floating[Any]]:
        """float32 counts for classification; float64 moments for regression (a node's variance
        is a difference of two of them)."""
        return np.float64 if self.regression else np.float32

    def to_array(self) -> np.ndarray:
        return np.array([FORMAT, *(getattr(self, f.name) for f in fields(self))],
                        dtype=np.float64)

    @classmethod
    def from_array(cls, array: np.ndarray) -> Settings:
        names = [f.name for f in fields(cls)]
        if array.shape != (len(names) + 1,) or not np.isfinite(array).all():
            raise RejectedUpdate("bad_forest", f"settings must be {len(names) + 1} numbers")
        if array[0] != FORMAT or (array != np.round(array)).any():
            raise RejectedUpdate("bad_forest", f"unknown settings format {array[0]}")
        s = cls(**{n: int(v) for n, v in zip(names, array[1:], strict=True)})
        ok = (s.n_features >= 1 and s.regression in (0, 1)
              and (s.n_classes == 0 if s.regression else s.n_classes >= 2)
              and 1 <= s.n_trees <= MAX_TREES
              and s.max_depth >= -1 and s.min_samples_leaf >= 1
              and 1 <= s.max_features <= s.n_candidates <= s.n_features
              and 2 <= s.max_bins <= MAX_BINS and s.bootstrap in (0, 1) and s.seed >= 0)
        if not ok:
            raise RejectedUpdate("bad_forest", f"invalid settings {s}")
        return s


@dataclass(frozen=True)
class ForestState:
    """The global model, unpacked and validated (see the module docstring for each array)."""

    settings: Settings
    edges: np.ndarray  # (d, max_bins - 1) float64, padded past n_edges
    n_edges: np.ndarray  # (d,) int32
    left: np.ndarray  # (N,) int32
    feature: np.ndarray  # (N,) int32
    threshold: np.ndarray  # (N,) float64
    value: np.ndarray  # (N, S) statistics (``Settings.n_stats``, ``Settings.stats_dtype``)
    depth: np.ndarray  # (N,) int32
    frontier: np.ndarray  # (F,) int32
    candidates: np.ndarray  # (F, M) int32
    constant: np.ndarray  # (F, d) uint8
    hist: np.ndarray  # (F, M, bins, S) statistics in an update, (0, M, bins, S) in a broadcast
    sketch: np.ndarray  # (d | 0, max_bins - 1) float64
    distinct: np.ndarray  # (d | 0, max_bins) float64
    exact: np.ndarray  # (d | 0,) float64

    @property
    def sketching(self) -> bool:
        """True in the first round: clients send quantile sketches, there are no trees yet."""
        return len(self.left) == 0

    @property
    def n_bins(self) -> int:
        """Histogram width: the most bins any feature has."""
        return int(self.n_edges.max(initial=0)) + 1

    def to_params(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) if name != "settings" else self.settings.to_array()
                for name in NAMES}

    def edges_of(self, feature: int) -> np.ndarray:
        return np.asarray(self.edges[feature, : self.n_edges[feature]])

    @property
    def hist_shape(self) -> tuple[int, int, int, int]:
        """The shape of a client's histograms this round: open nodes x candidates x bins x
        statistics."""
        return (len(self.frontier), self.candidates.shape[1], self.n_bins,
                self.settings.n_stats)

    def empty_hist(self) -> np.ndarray:
        return np.zeros(self.hist_shape, dtype=self.settings.stats_dtype)

    def for_broadcast(self) -> ForestState:
        """The state to send clients: ``hist`` reduced to its empty placeholder."""
        _, m, bins, stats = self.hist_shape
        return replace(self, hist=np.zeros((0, m, bins, stats), dtype=self.settings.stats_dtype))


def initial(settings: Settings) -> ForestState:
    """The model before round 1: no trees, clients are asked for quantile sketches."""
    d, b, m = settings.n_features, settings.max_bins, settings.n_candidates
    c, stats = settings.n_stats, settings.stats_dtype
    return ForestState(
        settings, np.zeros((d, b - 1)), np.zeros(d, dtype=np.int32),
        np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0),
        np.zeros((0, c), dtype=stats), np.zeros(0, dtype=np.int32),
        np.zeros(0, dtype=np.int32), np.zeros((0, m), dtype=np.int32),
        np.zeros((0, d), dtype=np.uint8), np.zeros((0, m, 1, c), dtype=stats),
        np.zeros((d, b - 1)), np.zeros((d, b)), np.zeros(d),
    )


def unpack(params: Params) -> ForestState:
    """Validate and unpack the arrays; raises RejectedUpdate('bad_forest', ...) naming the fault.

    Checks every index a client or the server will follow (children after their parent, so
    routing a row always ends), so a hostile model cannot make a party loop or read out of
    bounds.
    """
    if tuple(params) != NAMES:
        raise RejectedUpdate("bad_forest", f"expected arrays {list(NAMES)}, got {list(params)}")
    a = {k: np.asarray(v) for k, v in params.items()}
    s = Settings.from_array(a["settings"].astype(np.float64))
    d, c, b = s.n_features, s.n_stats, s.max_bins

    def fail(what: str) -> RejectedUpdate:
        return RejectedUpdate("bad_forest", what)

    def ints(name: str, shape: tuple[int, ...]) -> np.ndarray:
        v = a[name]
        if v.shape != shape or v.dtype.kind not in "iu":
            raise fail(f"{name!r} must be integers of shape {shape}, got {v.dtype} {v.shape}")
        return v.astype(np.int32)

    def floats(name: str, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
        v = a[name]
        if v.shape != shape or v.dtype.kind not in "fiu":
            raise fail(f"{name!r} must be numbers of shape {shape}, got {v.dtype} {v.shape}")
        if not np.isfinite(v).all():
            raise RejectedUpdate("not_finite", f"{name!r} contains NaN or Inf")
        return v.astype(dtype)

    edges = floats("edges", (d, b - 1))
    n_edges = ints("n_edges", (d,))
    if ((n_edges < 0) | (n_edges > b - 1)).any():
        raise fail("n_edges out of range")
    for f in range(d):
        if (np.diff(edges[f, : n_edges[f]]) <= 0).any():
            raise fail(f"edges of feature {f} are not strictly increasing")
    n = len(a["left"]) if a["left"].ndim == 1 else -1
    left = ints("left", (n,))
    feature = ints("feature", (n,))
    threshold = floats("threshold", (n,))
    value = floats("value", (n, c), s.stats_dtype)
    depth = ints("depth", (n,))
    if n and n < s.n_trees:
        raise fail(f"{n} nodes cannot hold {s.n_trees} trees")
    internal = left >= 0
    node = np.arange(n)
    if (internal & ((left <= node) | (left + 1 >= n))).any() or (left < -1).any():
        raise fail("a child index does not point after its parent")
    if (internal & ((feature < 0) | (feature >= d))).any() or (feature[~internal] != -1).any():
        raise fail("split features out of range")
    if negative_statistics(value, s) or (depth < 0).any():
        raise fail("negative counts, weights or depths")
    if (depth[left[internal]] != depth[internal] + 1).any():
        raise fail("children's depths are not their parent's + 1")
    f_count = len(a["frontier"]) if a["frontier"].ndim == 1 else -1
    frontier = ints("frontier", (f_count,))
    if ((frontier < 0) | (frontier >= n)).any() or len(np.unique(frontier)) != f_count:
        raise fail("frontier nodes out of range or repeated")
    if internal[frontier].any():
        raise fail("a frontier node is already split")
    candidates = ints("candidates", (f_count, s.n_candidates))
    if ((candidates < 0) | (candidates >= d)).any():
        raise fail("candidate features out of range")
    constant = ints("constant", (f_count, d))
    if ((constant != 0) & (constant != 1)).any():
        raise fail("'constant' flags must be 0 or 1")
    n_bins = int(n_edges.max(initial=0)) + 1
    filled = a["hist"].shape[:1] != (0,)  # a client's update; a broadcast holds a placeholder
    hist = floats("hist", (f_count if filled else 0, s.n_candidates, n_bins if n else 1, c),
                  s.stats_dtype)
    rows = 0 if n else d
    sketch = floats("sketch", (rows, b - 1))
    distinct = floats("distinct", (rows, b))
    exact = floats("exact", (rows,))
    return ForestState(s, edges, n_edges, left, feature, threshold, value, depth, frontier,
                       candidates, constant.astype(np.uint8), hist, sketch, distinct, exact)


# ---- statistics ------------------------------------------------------------------------------
def weight_of(stats: np.ndarray, settings: Settings) -> np.ndarray:
    """The bootstrap weight (row count) behind statistics ``(..., S)``."""
    return np.asarray(stats[..., 0] if settings.regression else stats.sum(axis=-1))


def negative_statistics(stats: np.ndarray, settings: Settings) -> bool:
    """Whether any count, weight or sum of squares is negative (a target sum may be)."""
    if settings.regression:
        return bool((stats[..., 0] < 0).any() or (stats[..., 2] < 0).any())
    return bool((stats < 0).any())


#: a regression node whose variance is at most this fraction of its mean square is constant
CONSTANT_TARGET = 1e-12


def impure(stats: np.ndarray, settings: Settings) -> np.ndarray:
    """Nodes whose rows do not all agree: two classes present, or targets that vary."""
    if not settings.regression:
        return np.asarray((stats > 0).sum(axis=-1) > 1)
    w = np.maximum(stats[..., 0], np.finfo(np.float64).tiny)
    mean, mean_square = stats[..., 1] / w, stats[..., 2] / w
    return np.asarray(mean_square - mean**2 > CONSTANT_TARGET * mean_square)


# ---- client-side computations ----------------------------------------------------------------
def sketch(x: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature ``max_bins - 1`` interior quantiles, up to ``max_bins`` distinct values and
    whether those are all of them (then the server can bin the feature exactly)."""
    d = x.shape[1]
    levels = np.arange(1, max_bins) / max_bins
    quantiles = np.quantile(x, levels, axis=0).T if len(x) else np.zeros((d, max_bins - 1))
    distinct = np.zeros((d, max_bins))
    exact = np.zeros(d)
    for f in range(d):
        values = np.unique(x[:, f])
        if 0 < len(values) <= max_bins:
            distinct[f] = np.pad(values, (0, max_bins - len(values)), mode="edge")
            exact[f] = 1.0
    return np.ascontiguousarray(quantiles), distinct, exact


def bin_data(x: np.ndarray, state: ForestState) -> np.ndarray:
    """Each value's bin index, ``(n, d)`` int32."""
    return np.stack([np.searchsorted(state.edges_of(f), x[:, f], side="right")
                     for f in range(x.shape[1])], axis=1).astype(np.int32)


def route(x: np.ndarray, state: ForestState) -> np.ndarray:
    """The node every row reaches in every tree, ``(trees, n)``: a leaf, or an open node."""
    trees = state.settings.n_trees if len(state.left) else 0
    node = np.repeat(np.arange(trees, dtype=np.int64)[:, None], len(x), axis=1)
    rows = np.arange(len(x))[None, :]
    while True:
        child = state.left[node]
        inside = child >= 0
        if not inside.any():
            return node
        right = x[rows, np.maximum(state.feature[node], 0)] >= state.threshold[node]
        node = np.where(inside, child + right, node)


def bootstrap_weights(x: np.ndarray, y: np.ndarray, settings: Settings) -> np.ndarray:
    """Poisson(1) weight of each row in each tree, ``(trees, n)``, from a keyed hash of (job
    seed, tree, row contents and target): the same every round and on whichever client holds
    the row. ``y``: class indices, or the targets themselves for regression."""
    n = len(x)
    if not settings.bootstrap:
        return np.ones((settings.n_trees, n))
    words = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64).reshape(n, -1)
    target = (np.ascontiguousarray(y, dtype=np.float64).view(np.uint64) if settings.regression
              else y.astype(np.uint64))
    key = np.full(n, _mix(np.uint64(settings.seed) + _GOLDEN), dtype=np.uint64)
    for column in (*words.T, target):
        key = _mix(key ^ column)
    salt = _mix(np.arange(1, settings.n_trees + 1, dtype=np.uint64) * _GOLDEN)
    bits = _mix(key[None, :] ^ salt[:, None])
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float64)


def _mix(value: Any) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that scatters every input bit."""
    z = np.asarray(value, dtype=np.uint64)
    with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the point
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)))


def histograms(x_bins: np.ndarray, y: np.ndarray, weights: np.ndarray,
               node_of: np.ndarray, state: ForestState) -> np.ndarray:
    """Each open node's statistics per candidate feature and bin: bootstrap-weighted class
    counts (``y``: class indices), or ``(w, w*y, w*y^2)`` for regression (``y``: targets)."""
    hist = state.empty_hist()
    f_count, m, n_bins, c = hist.shape
    if not f_count:
        return hist
    position = np.full(len(state.left), -1, dtype=np.int64)
    position[state.frontier] = np.arange(f_count)
    where = position[node_of]
    trees, rows = np.nonzero((where >= 0) & (weights > 0))
    pos = where[trees, rows]
    feats = state.candidates[pos]  # (k, m)
    bins = x_bins[rows[:, None], feats]
    cell = (pos[:, None] * m + np.arange(m)) * n_bins + bins  # (k, m): node, candidate, bin
    w = weights[trees, rows]
    if state.settings.regression:
        target = np.asarray(y, dtype=np.float64)[rows]
        sums = [np.bincount(cell.ravel(), weights=np.repeat(w * target**power, m),
                            minlength=hist.size // c) for power in range(c)]
        return np.stack(sums, axis=-1).reshape(hist.shape)
    index = cell * c + y[rows][:, None]
    counts = np.bincount(index.ravel(), weights=np.repeat(w, m), minlength=hist.size)
    return counts.astype(np.float32).reshape(hist.shape)


def predict_value(x: np.ndarray, state: ForestState) -> np.ndarray:
    """Regression: the mean over trees of each tree's weighted mean target at the node a row
    reaches (as scikit-learn's forests do); trees whose node is still empty (a root before its
    first split) do not vote, and 0 before any tree has a value."""
    if state.sketching:
        return np.zeros(len(x))
    stats = state.value[route(x, state)]  # (trees, n, 3)
    w = stats[..., 0]
    votes = (w > 0).sum(axis=0)
    means = np.where(w > 0, stats[..., 1] / np.where(w > 0, w, 1.0), 0.0)
    return np.asarray(np.where(votes > 0, means.sum(axis=0) / np.maximum(votes, 1), 0.0))


def predict_proba(x: np.ndarray, state: ForestState) -> np.ndarray:
    """Mean over trees of each tree's class frequencies at the node a row reaches (as
    scikit-learn's forests do); uniform before any tree exists or at an empty node."""
    c = state.settings.n_classes
    if state.sketching:
        return np.full((len(x), c), 1.0 / c)
    counts = state.value[route(x, state)].astype(np.float64)  # (trees, n, c)
    totals = counts.sum(axis=2, keepdims=True)
    proba = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 1.0 / c)
    return np.asarray(proba.mean(axis=0))


# ---- the adapter -----------------------------------------------------------------------------
class FederatedForestAdapter(ModelAdapter):
    """A client's view of the federated forest: it measures, the server grows. A classifier,
    or a regressor when the dataset's task is ``regression`` (metrics ``loss`` = MSE, ``r2``).

    ``fit`` fills in what the round asks for (quantile sketches in round 1, histograms of the
    open nodes afterwards) and changes nothing else; the ``forest-histograms`` aggregator turns
    the sums into splits. ``epochs`` is unused.
    """

    def __init__(
        self, spec: DataSpec, *, seed: int = 0, n_estimators: int = 100,
        max_depth: int | None = None, min_samples_leaf: int = 1,
        max_features: str | int | float | None = "default", max_bins: int = 64,
        candidate_factor: float = 2.0, bootstrap: bool = True,
    ) -> None:
        if spec.task not in ("classification", "regression"):
            raise ConfigError(f"federated-forest supports classification and regression, "
                              f"got task {spec.task!r}")
        regression = spec.task == "regression"
        if not regression and len(spec.classes) < 2:
            raise ConfigError(f"a classifier needs at least two classes, got {spec.classes}")
        if not isinstance(n_estimators, int) or not 1 <= n_estimators <= MAX_TREES:
            raise ConfigError(f"n_estimators must be an integer in [1, {MAX_TREES}], "
                              f"got {n_estimators!r}")
        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 1):
            raise ConfigError(f"max_depth must be a positive integer or null, got {max_depth!r}")
        if not isinstance(min_samples_leaf, int) or min_samples_leaf < 1:
            raise ConfigError(f"min_samples_leaf must be a positive integer, "
                              f"got {min_samples_leaf!r}")
        if not isinstance(max_bins, int) or not 2 <= max_bins <= MAX_BINS:
            raise ConfigError(f"max_bins must be an integer in [2, {MAX_BINS}], got {max_bins!r}")
        if isinstance(candidate_factor, bool) or not (
                isinstance(candidate_factor, int | float) and candidate_factor >= 1):
            raise ConfigError(f"candidate_factor must be a number >= 1, got {candidate_factor!r}")
        d = spec.n_features
        if max_features == "default":  # scikit-learn's forests' default for the task
            max_features = 1.0 if regression else "sqrt"
        k = _max_features(max_features, d)
        self.spec = spec
        self.classes = np.asarray(spec.classes)
        self.settings = Settings(
            n_features=d, n_classes=0 if regression else len(self.classes), n_trees=n_estimators,
            max_depth=-1 if max_depth is None else max_depth, min_samples_leaf=min_samples_leaf,
            max_features=k, n_candidates=min(d, max(k, math.ceil(candidate_factor * k))),
            max_bins=max_bins, bootstrap=int(bool(bootstrap)), seed=int(seed) % 2**32,
            regression=int(regression),
        )
        self.state = initial(self.settings)

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.state.to_params().items()}

    def set_params(self, params: Params) -> None:
        """Load the global model after validating it; raises RejectedUpdate."""
        state = unpack(params)
        if state.settings != self.settings:
            raise RejectedUpdate("wrong_settings", f"the model's settings {state.settings} are "
                                                   f"not this job's {self.settings}")
        self.state = state

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        """Fill in this round's sketch or histograms from the local rows."""
        x, y = self._rows(data)
        state = self.state
        if state.sketching:
            quantiles, distinct, exact = sketch(x, self.settings.max_bins)
            self.state = replace(state, sketch=quantiles, distinct=distinct, exact=exact)
        elif len(state.frontier):
            weights = bootstrap_weights(x, y, self.settings)
            self.state = replace(state, hist=histograms(
                bin_data(x, state), y, weights, route(x, state), state))
        return self.evaluate(data)

    def evaluate(self, data: Dataset) -> dict[str, float]:
        """Accuracy and loss (regression: MSE as loss, and r2), and how far the forest has
        grown: ``nodes``, and ``open_nodes`` still to split (until round 1 has set the bins,
        every tree's root), so a job that ends with ``open_nodes`` above 0 shows it needed more
        rounds."""
        state = self.state
        if self.settings.regression:
            metrics = regression_metrics(predict_value(self._x(data.x), state), data.y)
        else:
            metrics = classification_metrics(predict_proba(self._x(data.x), state),
                                             np.asarray(data.y), self.classes)
        metrics["open_nodes"] = float(self.settings.n_trees if state.sketching
                                      else len(state.frontier))
        metrics["nodes"] = float(len(state.left))
        return metrics

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.settings.regression:
            return predict_value(self._x(x), self.state)
        return np.asarray(self.classes[np.argmax(predict_proba(self._x(x), self.state), axis=1)])

    def _x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.spec.n_features:
            raise ConfigError(f"expected data with {self.spec.n_features} features, "
                              f"got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ConfigError("federated-forest needs finite feature values (no NaN/Inf)")
        return x

    def _rows(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """The features and, per row, its class index or (regression) its finite target."""
        x = self._x(data.x)
        y = np.asarray(data.y)
        if self.settings.regression:
            target = np.asarray(y, dtype=np.float64).reshape(-1)
            if target.shape != (len(x),) or not np.isfinite(target).all():
                raise ConfigError("federated-forest regression needs one finite target per row")
            return x, target
        index = np.clip(np.searchsorted(self.classes, y), 0, len(self.classes) - 1)
        unknown = self.classes[index] != y
        if unknown.any():
            raise ConfigError(f"labels {np.unique(y[unknown]).tolist()} are not in the job's "
                              f"classes {self.classes.tolist()}")
        return x, index


def _max_features(value: str | int | float | None, d: int) -> int:
    """scikit-learn's ``max_features`` rule: sqrt, log2, a count, a fraction, or None (all)."""
    if value is None:
        return d
    if value == "sqrt":
        return max(1, int(math.sqrt(d)))
    if value == "log2":
        return max(1, int(math.log2(d)))
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= d:
        return value
    if isinstance(value, float) and 0 < value <= 1:
        return max(1, int(value * d))
    raise ConfigError(f"max_features must be 'default', 'sqrt', 'log2', an integer in [1, {d}], "
                      f"a fraction in (0, 1] or null, got {value!r}")


@models.register("federated-forest")
def _build(spec: DataSpec, seed: int = 0, **options: Any) -> FederatedForestAdapter:
    """A random forest grown by all clients together on summed histograms (classification or
    regression, by the dataset's task); pair it with the ``forest-histograms`` aggregator."""
    return FederatedForestAdapter(spec, seed=seed, **options)
