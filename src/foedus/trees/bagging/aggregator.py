"""``tree-bagging``: merge the clients' trees into one global ensemble instead of averaging numbers.

Trees have no fixed shape, so this aggregator replaces the base class's flatten-and-average path
(``reset``/``accept``/``result`` are overridden whole). Updates are packed forests (see
:mod:`foedus.trees.bagging.packed_forest`) or packed XGBoost boosters
(:mod:`foedus.trees.bagging.packed_boosters`; the global model's format decides, and one booster
counts as one tree below). Each update is validated against the global model's schema (feature
count, value width, task) and its tree structure, then kept. ``result`` picks and weighs trees:

- ``max_trees`` caps the merged ensemble (``None``: keep every tree).
- ``select`` decides which trees survive the cap: ``samples`` (each client keeps a share of the
  cap proportional to its example count, its best-scored trees first), ``score`` (the trees with
  the highest validation score, whoever sent them) or ``random`` (seeded uniform sample).
- ``min_score`` drops trees whose validation score on their client is below it.
- ``weight`` sets each tree's vote: ``uniform``, ``samples`` (a client's trees share a vote
  proportional to its examples) or ``score`` (proportional to the tree's validation score).
- ``keep_previous`` keeps the previous global trees and adds this round's after them; with a cap,
  the oldest trees make room for the newest.

The merged forest goes back to every client in the next broadcast. Not streaming: every accepted
tree is held until ``result``, because a cap by score or by share needs all of them at once;
memory is the size of the submitted trees (bounded per update by ``max_nodes``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, TypeAlias

import numpy as np

from foedus.aggregate.base import Aggregator, aggregators, whole_number
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Message
from foedus.core.params import Params
from foedus.trees.bagging import packed_boosters as boosters
from foedus.trees.bagging import packed_forest as packed

Ensemble: TypeAlias = packed.PackedForest | boosters.PackedBoosters
_SELECT = ("samples", "score", "random")
_WEIGHT = ("uniform", "samples", "score")


@aggregators.register("tree-bagging")
class TreeBagging(Aggregator):
    """Merges clients' tree ensembles into one global ensemble (federated bagging)."""

    update_kind = "tree-ensemble"

    streaming: ClassVar[bool] = False

    def __init__(
        self, max_trees: int | None = None, select: str = "samples", weight: str = "uniform",
        min_score: float | None = None, keep_previous: bool = False,
        max_nodes: int = packed.DEFAULT_MAX_NODES,
        max_bytes: int = boosters.DEFAULT_MAX_BYTES, seed: int = 0,
    ) -> None:
        super().__init__()
        if max_trees is not None:
            whole_number("max_trees", max_trees, minimum=1)
        if select not in _SELECT:
            raise ConfigError(f"select must be one of {', '.join(_SELECT)}, got {select!r}")
        if weight not in _WEIGHT:
            raise ConfigError(f"weight must be one of {', '.join(_WEIGHT)}, got {weight!r}")
        whole_number("max_nodes", max_nodes, minimum=1)
        whole_number("max_bytes", max_bytes, minimum=1)
        whole_number("seed", seed, minimum=0)
        # a string min_score failed the round at its first comparison; a string keep_previous
        # ("no") was taken as true
        if min_score is not None and (isinstance(min_score, bool)
                                      or not isinstance(min_score, int | float)):
            raise ConfigError(f"min_score: expected a number, got {min_score!r}")
        if not isinstance(keep_previous, bool):
            raise ConfigError(f"keep_previous: expected true or false, got {keep_previous!r}")
        self.max_trees = max_trees
        self.select = select
        self.weight = weight
        self.min_score = min_score
        self.keep_previous = keep_previous
        self.max_nodes = max_nodes
        self.max_bytes = max_bytes
        self.seed = seed
        self._previous: Ensemble | None = None
        self._updates: list[tuple[Ensemble, int]] = []
        self._round = 0

    def reset(self, global_params: Params) -> None:
        """Open a round; the global ensemble fixes the format and schema updates must match."""
        try:
            previous = self._unpack(global_params)
        except RejectedUpdate as exc:
            raise ConfigError(
                f"tree-bagging needs a tree-ensemble model (e.g. sklearn-random-forest, "
                f"xgboost-bagging); the global parameters are not one: {exc}"
            ) from exc
        super().reset(global_params)  # base bookkeeping: spec (used for sizing), counters
        self._previous = previous
        self._updates = []
        self._round += 1

    def accept(self, update: Message) -> None:
        previous = self._require_open()
        if update.num_examples <= 0:
            raise RejectedUpdate("no_examples", f"{update.sender} reported {update.num_examples}")
        if isinstance(previous, boosters.PackedBoosters) != boosters.is_boosters(update.params):
            raise RejectedUpdate("wrong_names", f"{update.sender} sent a different kind of "
                                                "ensemble than the global model")
        forest = self._unpack(update.params, previous)
        if forest.n_trees == 0:
            raise RejectedUpdate("no_trees", f"{update.sender} sent an empty ensemble")
        self._updates.append((forest, update.num_examples))
        self.accepted += 1

    def result(self) -> dict[str, np.ndarray]:
        previous = self._require_open()
        if not self._updates:
            raise RejectedUpdate("no_updates", "no update was accepted this round")
        merged = _concat([f for f, _ in self._updates])
        counts = np.concatenate([np.full(f.n_trees, n, dtype=np.float64)
                                 for f, n in self._updates])
        client = np.concatenate([np.full(f.n_trees, i) for i, (f, _) in enumerate(self._updates)])
        keep = np.arange(merged.n_trees)
        if self.min_score is not None:
            keep = keep[merged.score[keep] >= self.min_score]
            if not len(keep):
                raise RejectedUpdate("no_updates", f"no tree scored at least {self.min_score}")
        cap = self.max_trees
        if cap is not None and len(keep) > cap:
            keep = self._choose(keep, cap, merged.score, client, counts)
        weights = self._weights(keep, merged.score, client, counts)
        new = merged.select(keep, weights)
        if self.keep_previous and previous.n_trees:
            room = previous.n_trees if cap is None else max(0, cap - new.n_trees)
            old = np.arange(previous.n_trees)[previous.n_trees - room:]
            if room and len(old):
                # old trees keep their relative votes, scaled to an equal per-tree footing
                kept = previous.select(np.asarray(old))
                old_w = kept.weight / max(kept.weight.mean(), 1e-300) * new.weight.mean()
                new = _concat([replace(kept, weight=old_w), new])
        total = new.weight.sum()
        if total <= 0:
            raise RejectedUpdate("no_updates", "every selected tree has zero weight")
        final = replace(new, weight=new.weight / total)
        return {k: np.array(v) for k, v in final.to_params().items()}

    def snapshot(self) -> dict[str, object]:
        return {"round": self._round}

    def restore(self, state: dict[str, object]) -> None:
        value = state.get("round", 0)
        self._round = int(value) if isinstance(value, int | np.integer) else 0

    # ---- selection and weighting ------------------------------------------------------------
    def _choose(
        self, keep: np.ndarray, cap: int, score: np.ndarray, client: np.ndarray,
        counts: np.ndarray,
    ) -> np.ndarray:
        if self.select == "score":
            order = np.argsort(-score[keep], kind="stable")
            return np.sort(keep[order[:cap]])
        if self.select == "random":
            rng = np.random.default_rng([self.seed, self._round])
            return np.sort(rng.choice(keep, cap, replace=False))
        # "samples": largest-remainder shares of the cap in proportion to example counts
        clients = np.unique(client[keep])
        n = np.array([counts[keep][client[keep] == c][0] for c in clients])
        available = np.array([np.sum(client[keep] == c) for c in clients])
        quota = np.minimum(np.floor(cap * n / n.sum()).astype(int), available)
        while quota.sum() < cap:  # hand out what rounding (or a small client) left over
            spare = available - quota
            remainder = cap * n / n.sum() - quota
            remainder[spare <= 0] = -np.inf
            quota[int(np.argmax(remainder))] += 1
        chosen = []
        for c, q in zip(clients, quota, strict=True):
            mine = keep[client[keep] == c]
            chosen.append(mine[np.argsort(-score[mine], kind="stable")[:q]])
        return np.sort(np.concatenate(chosen))

    def _weights(
        self, keep: np.ndarray, score: np.ndarray, client: np.ndarray, counts: np.ndarray
    ) -> np.ndarray:
        if self.weight == "uniform":
            return np.ones(len(keep))
        if self.weight == "score":
            return np.asarray(np.clip(score[keep], 0.0, None), dtype=np.float64)
        per_client = np.bincount(client[keep])  # "samples": a client's trees share its vote
        return np.asarray(counts[keep] / per_client[client[keep]], dtype=np.float64)

    # the base class's vector path does not apply to trees; accept/result never call these
    def fold_vector(self, vector: np.ndarray, weight: int) -> None:
        raise ConfigError("tree bagging merges trees; it has no parameter vector to average")

    def result_vector(self) -> np.ndarray:
        raise ConfigError("tree bagging merges trees; it has no parameter vector to average")

    def _unpack(self, params: Params, schema: Ensemble | None = None) -> Ensemble:
        shape: dict[str, Any] = {} if schema is None else {
            "n_features": schema.n_features, "n_values": schema.n_values, "task": schema.task}
        if boosters.is_boosters(params):
            return boosters.unpack(params, max_bytes=self.max_bytes, **shape)
        return packed.unpack(params, max_nodes=self.max_nodes, **shape)

    def _require_open(self) -> Ensemble:
        if self._previous is None:
            raise ConfigError("TreeBagging: call reset(global_params) first")
        return self._previous


def _concat(parts: list[Ensemble]) -> Ensemble:
    """Concatenate ensembles of one format (accept has already checked the format)."""
    if isinstance(parts[0], boosters.PackedBoosters):
        return boosters.concat([p for p in parts if isinstance(p, boosters.PackedBoosters)])
    return packed.concat([p for p in parts if isinstance(p, packed.PackedForest)])
