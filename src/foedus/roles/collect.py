"""One round's collection of updates, shared by every pod that aggregates its children.

The root server and a hierarchical edge do the same thing between broadcasting a model and
aggregating: admit each arriving update only if it belongs to this job, this round and a sender
that has not answered yet (refusing it with a reason otherwise), fold it into the aggregator,
count failures and rejections, and wait until every expected sender answered or the deadline
passed. :class:`RoundCollector` does that once, so both pods refuse exactly the same inputs for
exactly the same reasons; the pods keep only what differs (what a round is for, what to record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from foedus.aggregate.base import Aggregator
from foedus.core.errors import RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import Params

T = TypeVar("T")
#: models with at least this many values are folded in (and aggregated) in a worker thread
OFFLOAD_VALUES = 1 << 18


@dataclass
class Tally:
    """What the senders did in one round. ``rejected`` counts refusals by reason, including
    invalid messages that arrived during the round for another round; ``senders`` are those
    that answered (an update, a failure, or an update the aggregator refused each count once)."""

    round: int
    accepted: int = 0
    num_examples: int = 0  # over accepted updates
    rejected: dict[str, int] = field(default_factory=dict)
    failed_clients: list[str] = field(default_factory=list)
    senders: set[str] = field(default_factory=set)
    metrics: dict[str, tuple[int, Mapping[str, float]]] = field(default_factory=dict)

    def missing(self, expected: int) -> int:
        """How many of ``expected`` senders never answered."""
        return max(0, expected - len(self.senders))

    def client_metrics(self) -> dict[str, float]:
        """The accepted senders' metrics weighted by their examples: one honest figure."""
        return weighted_mean(list(self.metrics.values()))

    def admit(self, msg: Message) -> None:
        """Count ``msg`` as accepted."""
        self.accepted += 1
        self.num_examples += msg.num_examples
        self.metrics[msg.sender] = (msg.num_examples, dict(msg.metrics))

    def withdraw(self, msg: Message) -> None:
        """Undo :meth:`admit` for an update the aggregator refused late."""
        self.accepted -= 1
        self.num_examples -= msg.num_examples
        self.metrics.pop(msg.sender, None)


class RoundCollector:
    """Admits updates for the open round into ``aggregator``; one per aggregating pod.

    ``participants`` (if known) is the whole job's roster: anyone else is refused as
    ``unknown_sender``. ``rejections`` counts refusals over the whole job, for metrics exporters.
    ``lock`` guards the round state; a pod that admits updates by other means (the secure-sum
    server) holds it while it changes :attr:`tally`, then calls :meth:`notify`.
    """

    def __init__(self, *, job_id: str, aggregator: Aggregator,
                 participants: Collection[str] | None = None,
                 logger: logging.Logger | None = None, label: str = "") -> None:
        self.job_id = job_id
        self.aggregator = aggregator
        self.participants = None if participants is None else frozenset(participants)
        self.rejections: Counter[str] = Counter()
        self.current_round = 0  # 0 while no round is open: every update is then stale
        self.tally: Tally | None = None  # the open round's, or None
        self.offload = False
        self.lock = asyncio.Lock()
        self._log = logger or logging.getLogger("foedus.collect")
        self._label = label  # prefixes log lines, e.g. "edge e1 "
        self._last: Tally = Tally(0)  # the latest round's, still read after close()
        self._selected: frozenset[str] | None = None
        self._seen_ids: dict[int, set[str]] = {}  # message ids of this and the previous round
        #: one item per answer or refusal; :meth:`wait` recounts the answers on each
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()

    @property
    def senders(self) -> set[str]:
        """Who answered in the open round (or the last one, once closed)."""
        return self._last.senders

    async def open(self, rnd: int, global_params: Params,
                   selected: Collection[str] | None = None) -> None:
        """Start round ``rnd`` from ``global_params``; ``selected``: the only senders sampled."""
        async with self.lock:
            self.current_round = rnd
            self.tally = self._last = Tally(rnd)
            self._selected = None if selected is None else frozenset(selected)
            self.aggregator.reset(global_params)
            self.offload = sum(a.size for a in global_params.values()) >= OFFLOAD_VALUES
            self._seen_ids = {r: ids for r, ids in self._seen_ids.items() if r >= rnd - 1}
            while not self.arrivals.empty():
                self.arrivals.get_nowait()

    async def close(self) -> Tally:
        """End the round: later updates for it are refused as stale. Updates the aggregator
        refuses only now (it may fold them in late, see :meth:`Aggregator.settle`) move from
        accepted to rejected."""
        async with self.lock:
            tally = self._last
            if self.tally is not None:
                late = await self.blocking(partial(self.aggregator.settle, final=True))
                for msg, exc in late:
                    tally.withdraw(msg)
                    self.reject(msg, exc)
            self.current_round = 0
            self.tally = None
        return tally

    async def wait(self, expected: int, timeout: float) -> None:
        """Wait until ``expected`` senders answered, or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while len(self._last.senders) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self.arrivals.get(), timeout=remaining)
            except TimeoutError:
                return

    def notify(self) -> None:
        """Wake :meth:`wait` to recount the answers."""
        self.arrivals.put_nowait(None)

    async def offer(self, msg: Message) -> None:
        """Admit one sender's update or failure, or refuse it with a reason (a refused message
        is not an answer: its sender may still send a valid one)."""
        async with self.lock:
            try:
                self.check(msg)
            except RejectedUpdate as exc:
                self.reject(msg, exc)
                return
            tally = self.tally
            assert tally is not None
            tally.senders.add(msg.sender)
            if msg.kind is Kind.ERROR or msg.error is not None:
                tally.failed_clients.append(msg.sender)
                self._log.warning("%sround %d: %s failed: %s", self._label, msg.round,
                                  msg.sender, msg.error)
            else:
                try:
                    await self.blocking(self.aggregator.accept, msg)
                except RejectedUpdate as exc:
                    self.reject(msg, exc)
                except Exception as exc:  # a bug in the aggregator: the round must go on
                    self._log.exception("%saggregator %s failed on the update from %s",
                                        self._label, self.aggregator.describe(), msg.sender)
                    self.reject(msg, RejectedUpdate(
                        "aggregator_error", f"{type(exc).__name__}: {exc}"))
                else:
                    tally.admit(msg)
        self.notify()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model-sized work in a worker thread for large models, inline for small ones:
        a thread hop costs more than folding in or evaluating a small model."""
        if self.offload:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def reject(self, msg: Message, exc: RejectedUpdate) -> None:
        """Count a refusal for the job and for the round during which it arrived."""
        self.rejections[exc.reason] += 1
        if self.tally is not None:
            self.tally.rejected[exc.reason] = self.tally.rejected.get(exc.reason, 0) + 1
        self._log.warning("%srejected update from %s (round %d): %s", self._label, msg.sender,
                          msg.round, exc)

    def check(self, msg: Message) -> None:
        """Raise :class:`RejectedUpdate` unless ``msg`` is a fresh answer for the open round;
        remember its id so a replay of it is refused."""
        message_id = msg.header.message_id
        if any(message_id in ids for ids in self._seen_ids.values()):
            raise RejectedUpdate("replayed", f"message {message_id} was already received")
        if msg.header.job_id != self.job_id:
            raise RejectedUpdate("wrong_job", f"message is for job {msg.header.job_id!r}")
        if msg.kind not in (Kind.UPDATE, Kind.ERROR):
            raise RejectedUpdate("wrong_kind", f"expected an update, got {msg.kind.value}")
        if self.tally is None or msg.round != self.current_round:
            raise RejectedUpdate(
                "stale_round", f"update for round {msg.round}, current is {self.current_round}"
            )
        if self._selected is not None and msg.sender not in self._selected:
            raise RejectedUpdate("not_selected", f"{msg.sender} was not sampled this round")
        if msg.sender in self.tally.senders:
            raise RejectedUpdate("duplicate", f"{msg.sender} already answered this round")
        if msg.trail:
            raise RejectedUpdate(
                "undecoded", f"filters {list(msg.trail)} were not undone before aggregation"
            )
        if self.participants is not None and msg.sender not in self.participants:
            raise RejectedUpdate("unknown_sender", f"{msg.sender!r} is not a participant")
        self._seen_ids.setdefault(self.current_round, set()).add(message_id)


def weighted_mean(items: list[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric averaged over the items that report it, weighted by their examples."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    return {k: totals[k] / weights[k] for k in totals if weights[k] > 0}
