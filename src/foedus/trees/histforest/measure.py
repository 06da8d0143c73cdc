"""What a client measures for the federated forest: quantile sketches, bins, bootstrap
weights and the open nodes' histograms.

These run on a client's own rows (:class:`~foedus.trees.histforest.adapter.FederatedForestAdapter`
calls them); only their results leave the client.

Bootstrap: each row's weight in tree ``t`` is Poisson(1), drawn from a keyed hash of (job seed,
tree, the row's contents). That is a central bootstrap in distribution (Poisson(1) is the
standard large-sample form of it), the same in every round without any client state, and
independent of which client holds a row or in which order: the forest does not depend on the
partition at all, only on the bin edges. Identical rows share their weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from foedus.trees.histforest.format import ForestState, Settings

_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(32)])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
