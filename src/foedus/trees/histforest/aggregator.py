"""``forest-histograms``: grows the federated forest from histograms summed over clients.

The server side of the federated forest (:mod:`foedus.trees.histforest.adapter`). Each round it
SUMS what the clients report (plain counts, not example-weighted means: a split must see every
row once) and ``result`` turns the sums into the next global model, with the criteria of
:mod:`foedus.trees.histforest.splits`:

- round 1 (sketching): per-feature bin edges. A feature every client holds at most ``max_bins``
  distinct values of, and whose union is at most ``max_bins`` values, gets exact bins (edges
  halfway between consecutive values, scikit-learn's own thresholds); any other feature gets
  the example-weighted mean of the clients' quantiles. The trees' roots open.
- later rounds: each open node is split on the best candidate feature and bin boundary: the
  largest Gini impurity decrease for classification, squared-error decrease for regression
  (both scikit-learn's defaults). Candidates come in the server's random order; like
  scikit-learn, the first ``max_features`` that are not constant in the node compete. A node
  that is pure (one class, or one target value), too small for two ``min_samples_leaf``
  children, at ``max_depth``, or without a valid split
  becomes a leaf. Children open when they could still split; their candidates are drawn from
  a seed derived from (job seed, node count), so a re-run or a restarted server grows the same
  forest. A feature found constant in a node is constant in all its descendants: like
  scikit-learn, they remember it and draw such features last. Once no node is open, rounds
  change nothing.

Everything the aggregator needs lives in the global model (settings included), so it has no
options and no state to snapshot. Streaming: it holds one sum, the size of one update.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np

from foedus.aggregate.base import Aggregator, aggregators
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Message
from foedus.core.params import Params, ParamSpec
from foedus.trees.histforest.format import REPORTED, ForestState, negative_statistics, unpack
from foedus.trees.histforest.splits import best_splits, can_split, draw_candidates, weight_of

#: open nodes split per numpy pass; bounds the temporaries (chunk x candidates x bins x stats)
CHUNK = 128


@aggregators.register("forest-histograms")
class ForestHistograms(Aggregator):
    """Sums clients' sketches or node histograms and grows the federated forest from them."""

    update_kind = "forest-histograms"

    streaming: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._state: ForestState | None = None
        self._hist: np.ndarray | None = None
        self._quantiles: np.ndarray | None = None
        self._examples = 0
        self._exact: np.ndarray | None = None
        self._distinct: list[np.ndarray] = []

    def reset(self, global_params: Params) -> None:
        try:
            state = unpack(global_params)
        except RejectedUpdate as exc:
            raise ConfigError(f"forest-histograms needs the federated-forest model; the global "
                              f"parameters are not one: {exc}") from exc
        super().reset(global_params)
        self._state = state
        self._hist = np.zeros(state.hist_shape)
        self._quantiles = np.zeros(state.sketch.shape)
        self._exact = np.zeros(state.exact.shape)
        self._examples = 0
        self._distinct = []

    def accept(self, update: Message) -> None:
        """Check the update (same arrays, forest untouched, statistics finite, counts, weights and
        squares non-negative, the same totals per node whichever feature binned it), then add it
        to the sums."""
        state = self._open()
        self._update_spec(state).check(update.params)
        if update.num_examples <= 0:
            raise RejectedUpdate("no_examples", f"{update.sender} reported {update.num_examples}")
        for name, array in update.params.items():
            if name in REPORTED:
                continue
            if not np.array_equal(np.asarray(array), self._global_array(name)):
                raise RejectedUpdate("changed_forest", f"{update.sender} changed {name!r}; only "
                                                       f"{', '.join(REPORTED)} may differ")
        arrays = {k: np.asarray(update.params[k], dtype=np.float64) for k in REPORTED}
        for name, array in arrays.items():
            if not np.isfinite(array).all():
                raise RejectedUpdate("not_finite", f"{name!r} contains NaN or Inf")
        hist = arrays["hist"]
        if negative_statistics(hist, state.settings):
            raise RejectedUpdate("negative_counts", f"{update.sender} sent negative counts")
        if hist.size:
            per_feature = hist.sum(axis=2)  # (F, M, S): every candidate bins the same rows
            spread = per_feature.max(axis=1) - per_feature.min(axis=1)
            scale = np.abs(per_feature).max(axis=1)
            if (spread > 1e-6 * np.maximum(scale, 1.0)).any():
                raise RejectedUpdate("inconsistent_histogram", f"{update.sender}'s histograms "
                                     "of one node hold different totals")
        if state.sketching:
            if (np.diff(arrays["sketch"], axis=1) < 0).any():
                raise RejectedUpdate("bad_sketch", f"{update.sender}'s quantiles decrease")
            if not np.isin(arrays["exact"], (0.0, 1.0)).all():
                raise RejectedUpdate("bad_sketch", "'exact' flags must be 0 or 1")
        assert self._hist is not None and self._quantiles is not None and self._exact is not None
        self._hist += hist
        self._quantiles += update.num_examples * arrays["sketch"]
        self._exact += arrays["exact"]
        self._examples += update.num_examples
        if state.sketching:
            self._distinct.append(arrays["distinct"])
        self.accepted += 1

    def result(self) -> dict[str, np.ndarray]:
        state = self._closing()
        new = self._bin_edges(state) if state.sketching else self._grow(state)
        return {k: np.array(v) for k, v in new.to_params().items()}

    def edge_result(self) -> dict[str, np.ndarray]:
        """An edge's answer to its parent: the global model with the reported arrays summed
        over its children, as if it were one client holding all their rows. Histograms are
        sums, so the root grows exactly the forest a flat job grows; the sketch is the edge's
        example-weighted mean (its parent weights it by the edge's examples), and a feature
        stays exactly binnable if every child's values, and their union, fit ``max_bins``."""
        state = self._closing()
        assert self._hist is not None and self._quantiles is not None
        reported = {"hist": self._hist.astype(state.settings.stats_dtype)}
        if state.sketching:
            distinct = np.zeros_like(state.distinct)
            exact = np.zeros_like(state.exact)
            for f in range(state.settings.n_features):
                values = self._exact_values(state, f)
                if values is not None:
                    distinct[f] = np.pad(values, (0, distinct.shape[1] - len(values)),
                                         mode="edge")
                    exact[f] = 1.0
            reported.update(sketch=self._quantiles / self._examples, distinct=distinct,
                            exact=exact)
        return {name: np.array(reported.get(name, array))
                for name, array in state.to_params().items()}

    def describe(self) -> str:
        return "forest-histograms"

    # ---- round 1: bin edges ------------------------------------------------------------------
    def _bin_edges(self, state: ForestState) -> ForestState:
        s = state.settings
        assert self._exact is not None and self._quantiles is not None
        edges = np.zeros_like(state.edges)
        n_edges = np.zeros(s.n_features, dtype=np.int32)
        mean_quantiles = self._quantiles / self._examples
        for f in range(s.n_features):
            values = self._exact_values(state, f)
            if values is not None:
                cut = (values[:-1] + values[1:]) / 2
            else:
                cut = np.unique(mean_quantiles[f])
            n_edges[f] = len(cut)
            edges[f, : len(cut)] = cut
            edges[f, len(cut):] = cut[-1] if len(cut) else 0.0
        t = s.n_trees
        grown = ForestState(
            s, edges, n_edges, np.full(t, -1, dtype=np.int32), np.full(t, -1, dtype=np.int32),
            np.zeros(t), np.zeros((t, s.n_stats), dtype=s.stats_dtype),
            np.zeros(t, dtype=np.int32), np.arange(t, dtype=np.int32),
            draw_candidates(s.seed, 0, np.zeros((t, s.n_features), dtype=np.uint8),
                             s.n_candidates),
            np.zeros((t, s.n_features), dtype=np.uint8), state.hist, state.sketch[:0],
            state.distinct[:0], state.exact[:0],
        )
        return grown.for_broadcast()

    # ---- later rounds: splits ----------------------------------------------------------------
    def _grow(self, state: ForestState) -> ForestState:
        s = state.settings
        assert self._hist is not None
        if not len(state.frontier):
            return state
        left, feature = state.left.copy(), state.feature.copy()
        threshold, value = state.threshold.copy(), state.value.copy()
        new_values: list[np.ndarray] = []
        new_depths: list[np.ndarray] = []
        new_constant: list[np.ndarray] = []
        n = len(left)
        for start in range(0, len(state.frontier), CHUNK):
            nodes = state.frontier[start : start + CHUNK]
            hist = self._hist[start : start + CHUNK]
            cands = state.candidates[start : start + CHUNK]
            total = hist[:, 0].sum(axis=1)  # (k, S): any candidate bins every row once
            value[nodes] = total
            j, b, children = best_splits(hist, total, s)
            known = state.constant[start : start + CHUNK].copy()
            flat = (weight_of(hist, s) > 0).sum(axis=2) <= 1  # (k, M) constant candidates
            rows, cols = np.nonzero(flat)
            known[rows, cands[rows, cols]] = 1
            splittable = can_split(total, state.depth[nodes], s)
            split = splittable & (j >= 0)
            for i in np.flatnonzero(split):
                node, f = nodes[i], cands[i, j[i]]
                left[node], feature[node] = n, f
                threshold[node] = state.edges[f, b[i]]
                new_values.append(children[i])
                new_depths.append(np.full(2, state.depth[node] + 1))
                new_constant.append(np.stack([known[i], known[i]]))
                n += 2
        first = len(state.left)
        added = n - first
        child_value = (np.concatenate(new_values) if new_values
                       else np.zeros((0, s.n_stats))).astype(s.stats_dtype)
        child_depth = (np.concatenate(new_depths) if new_depths
                       else np.zeros(0)).astype(np.int32)
        child_constant = (np.concatenate(new_constant) if new_constant
                          else np.zeros((0, s.n_features), dtype=np.uint8))
        opens = can_split(child_value.astype(np.float64), child_depth, s)
        frontier = (first + np.flatnonzero(opens)).astype(np.int32)
        constant = child_constant[opens].astype(np.uint8)
        grown = replace(
            state, left=np.concatenate([left, np.full(added, -1, dtype=np.int32)]),
            feature=np.concatenate([feature, np.full(added, -1, dtype=np.int32)]),
            threshold=np.concatenate([threshold, np.zeros(added)]),
            value=np.concatenate([value, child_value]),
            depth=np.concatenate([state.depth, child_depth]), frontier=frontier,
            candidates=draw_candidates(s.seed, first, constant, s.n_candidates),
            constant=constant,
        )
        return grown.for_broadcast()

    def _exact_values(self, state: ForestState, feature: int) -> np.ndarray | None:
        """Every value of ``feature`` on every client, if each client sent all of its values
        and together they fit ``max_bins``; else None (the feature is binned by quantiles)."""
        assert self._exact is not None
        if self._exact[feature] != self.accepted:
            return None
        values = np.unique(np.concatenate([d[feature] for d in self._distinct]))
        return values if len(values) <= state.settings.max_bins else None

    # ---- plumbing ----------------------------------------------------------------------------
    def _update_spec(self, state: ForestState) -> ParamSpec:
        """What an update must match: the broadcast's arrays, with ``hist`` at its full shape."""
        spec = self.spec
        shapes = tuple(state.hist_shape if name == "hist" else shape
                       for name, shape in zip(spec.names, spec.shapes, strict=True))
        return replace(spec, shapes=shapes)

    def _global_array(self, name: str) -> np.ndarray:
        assert self._global_params is not None
        return np.asarray(self._global_params[name])

    def _closing(self) -> ForestState:
        """The round's state, once at least one update was accepted."""
        state = self._open()
        if self.accepted == 0:
            raise RejectedUpdate("no_updates", "no update was accepted this round")
        return state

    def _open(self) -> ForestState:
        if self._state is None:
            raise ConfigError("forest-histograms: call reset(global_params) first")
        return self._state

    def fold_vector(self, vector: np.ndarray, weight: int) -> None:
        raise ConfigError("forest-histograms sums histograms; it has no vector to average")

    def result_vector(self) -> np.ndarray:
        raise ConfigError("forest-histograms sums histograms; it has no vector to average")
