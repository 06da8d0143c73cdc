"""Shared helpers for the aggregator tests: build updates and run one round by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foedus.aggregate.base import Aggregator, aggregators
from foedus.core.errors import RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.plugins import load_plugins

load_plugins(everything=True)  # every aggregator registered, the tree ones too

#: every registered aggregator that averages parameters, with settings that accept the 7+
#: updates the tests send
SETTINGS: dict[str, dict[str, object]] = {
    "fedavg": {"kernel": "numba"},  # the numpy fold: test_fedavg and the optimisers below
    "fedavgm": {"server_lr": 1.0, "momentum": 0.0},
    "fedadagrad": {},
    "fedadam": {},
    "fedyogi": {},
    "krum": {"f": 1},
    "multi-krum": {"f": 1},
    "median": {},
    "trimmed-mean": {"beta": 0.2},
    "geomedian": {},
    "bulyan": {"f": 1},
}
ROBUST = ["krum", "multi-krum", "median", "trimmed-mean", "geomedian", "bulyan"]


def make(name: str, **overrides: object) -> Aggregator:
    return aggregators.create(name, **{**SETTINGS[name], **overrides})


def upd(sender: str, n: int, **params: np.ndarray) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender, params=params,
                          num_examples=n)


def refusal(agg: Aggregator, update: Message) -> RejectedUpdate:
    """The reason ``agg`` refuses ``update``: raised by ``accept``, or returned by ``settle``
    when the rule folds updates in late (FedAvg's groups). Fails the test if it is taken."""
    try:
        agg.accept(update)
    except RejectedUpdate as exc:
        return exc
    late = agg.settle()
    assert [msg for msg, _ in late] == [update], "the update was not refused"
    return late[0][1]


def run_round(
    agg: Aggregator, global_params: dict[str, np.ndarray],
    updates: Sequence[dict[str, np.ndarray]], weights: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """One round: reset from ``global_params``, accept each update, return the result."""
    agg.reset(global_params)
    for i, params in enumerate(updates):
        agg.accept(upd(f"c{i}", 1 if weights is None else weights[i], **params))
    return agg.result()


def vectors(agg: Aggregator, rows: np.ndarray, weights: Sequence[int] | None = None,
            origin: np.ndarray | None = None) -> np.ndarray:
    """Run a round on the rows of ``rows`` as one-parameter updates; return the result vector."""
    start = np.zeros(rows.shape[1], rows.dtype) if origin is None else origin
    out = run_round(agg, {"w": start}, [{"w": r} for r in rows], weights)
    return out["w"]
