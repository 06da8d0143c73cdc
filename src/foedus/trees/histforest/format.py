"""The federated forest's global model: its arrays, its settings, and their validation.

Every party (clients, edges, the server) reads and writes the forest through this module, so
they agree on one layout and a hostile model is refused before anyone follows its indices.

What a histogram bin holds (its *statistics*, the last axis of ``hist`` and ``value``):
classification: the bootstrap-weighted count of each class (Gini splits, class frequencies at
the leaves); regression: the weight, the weighted sum of the targets and of their squares,
``(w, w*y, w*y^2)`` (squared-error splits, the weighted mean at the leaves), in float64 so
that a node's variance is not lost to rounding.

The global model is a set of named arrays (:meth:`ForestState.to_params`, :func:`unpack`):

- ``settings``: the forest's options, so the server-side aggregator (``forest-histograms`` in
  :mod:`foedus.trees.histforest.aggregator`) needs none of its own and cannot disagree with
  the model.
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
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from foedus.core.errors import RejectedUpdate
from foedus.core.params import Params

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


def negative_statistics(stats: np.ndarray, settings: Settings) -> bool:
    """Whether any count, weight or sum of squares is negative (a target sum may be)."""
    if settings.regression:
        return bool((stats[..., 0] < 0).any() or (stats[..., 2] < 0).any())
    return bool((stats < 0).any())
