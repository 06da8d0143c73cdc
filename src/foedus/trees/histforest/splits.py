"""The federated forest's split maths: from summed statistics to splits and new open nodes.

Pure functions of the histograms the server has summed over clients and the forest's
:class:`~foedus.trees.histforest.format.Settings`; the ``forest-histograms`` aggregator
(:mod:`foedus.trees.histforest.aggregator`) owns the round and calls them. They are kept apart
from it so the criteria (scikit-learn's Gini and squared-error decreases, its rule for constant
features, purity) can be read and tested on their own.
"""

from __future__ import annotations

import numpy as np

from foedus.trees.histforest.format import Settings


def weight_of(stats: np.ndarray, settings: Settings) -> np.ndarray:
    """The bootstrap weight (row count) behind statistics ``(..., S)``."""
    return np.asarray(stats[..., 0] if settings.regression else stats.sum(axis=-1))


#: a regression node whose variance is at most this fraction of its mean square is constant
CONSTANT_TARGET = 1e-12


def impure(stats: np.ndarray, settings: Settings) -> np.ndarray:
    """Nodes whose rows do not all agree: two classes present, or targets that vary."""
    if not settings.regression:
        return np.asarray((stats > 0).sum(axis=-1) > 1)
    w = np.maximum(stats[..., 0], np.finfo(np.float64).tiny)
    mean, mean_square = stats[..., 1] / w, stats[..., 2] / w
    return np.asarray(mean_square - mean**2 > CONSTANT_TARGET * mean_square)


def best_splits(
    hist: np.ndarray, total: np.ndarray, s: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best split of each node from its summed histograms ``(k, M, bins, S)``.

    Returns the candidate column ``j`` (-1: no valid split), the bin ``b`` (rows in bins
    ``<= b`` go left) and the children's statistics ``(k, 2, S)``. Minimising the children's
    weighted Gini impurity is maximising ``sum(L^2)/|L| + sum(R^2)/|R|`` over the class counts;
    minimising their squared error is maximising ``Ly^2/Lw + Ry^2/Rw`` (``Lw``: the left
    child's weight, ``Ly``: its weighted target sum; the sum of squares is the same for every
    split).
    """
    k, _, n_bins, c = hist.shape
    occupied = (weight_of(hist, s) > 0).sum(axis=2)  # non-empty bins per candidate
    varies = occupied > 1
    competes = varies & (np.cumsum(varies, axis=1) <= s.max_features)
    lefts = np.cumsum(hist, axis=2)[:, :, :-1, :]  # (k, M, bins - 1, S)
    rights = total[:, None, None, :] - lefts
    n_left, n_right = weight_of(lefts, s), weight_of(rights, s)
    valid = ((n_left >= s.min_samples_leaf) & (n_right >= s.min_samples_leaf)
             & competes[:, :, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        if s.regression:
            score = lefts[..., 1]**2 / n_left + rights[..., 1]**2 / n_right
        else:
            score = (lefts**2).sum(axis=3) / n_left + (rights**2).sum(axis=3) / n_right
    children = np.zeros((k, 2, c))
    if n_bins < 2:  # every feature is constant everywhere: nothing can split
        return np.full(k, -1), np.zeros(k, dtype=np.int64), children
    score = np.where(valid, score, -np.inf).reshape(k, -1)
    best = np.argmax(score, axis=1)
    rows = np.arange(k)
    ok = np.isfinite(score[rows, best])
    j, b = np.divmod(best, n_bins - 1)
    children[:, 0] = lefts[rows, j, b]
    children[:, 1] = rights[rows, j, b]
    return np.where(ok, j, -1), b, children


def can_split(counts: np.ndarray, depth: np.ndarray, s: Settings) -> np.ndarray:
    """Nodes worth a histogram: impure, room for two leaves, above ``max_depth``."""
    deep_ok = depth < s.max_depth if s.max_depth >= 0 else np.ones(len(depth), dtype=bool)
    roomy = weight_of(counts, s) >= 2 * s.min_samples_leaf
    return np.asarray(impure(counts, s) & roomy & deep_ok)


def draw_candidates(seed: int, first_node: int, constant: np.ndarray, m: int) -> np.ndarray:
    """Each new open node's candidate features in random order (a seeded permutation prefix),
    features known to be constant in the node last."""
    rng = np.random.default_rng([seed, first_node])
    keys = rng.random(constant.shape) + constant
    return np.argsort(keys, axis=1)[:, :m].astype(np.int32)
