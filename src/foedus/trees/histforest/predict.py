"""Prediction with the federated forest: routing rows to nodes and averaging the trees.

Used by clients to evaluate the global model and to find each row's open node before they
count it into a histogram; works on any forest :func:`~foedus.trees.histforest.format.unpack`
has accepted, complete or still growing.
"""

from __future__ import annotations

import numpy as np

from foedus.trees.histforest.format import ForestState


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
