"""One round's collection of updates, shared by every pod that aggregates its children.

The root server and a hierarchical edge do the same thing between broadcasting a model and
aggregating: admit each arriving update only if :class:`~foedus.roles.admission.Admission`
admits it (the rules every aggregating role shares), fold it into the aggregator,
count failures and rejections, and wait until every expected sender answered or the deadline
passed. :class:`RoundCollector` does that once, so both pods refuse exactly the same inputs for
exactly the same reasons; the pods keep only what differs (what a round is for, what to record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from foedus.aggregate.base import Aggregator
from foedus.core.errors import RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.roles.admission import UNKNOWN_SENDER, Admission

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

    What is admitted is decided by :class:`~foedus.roles.admission.Admission` (the rules every
    aggregating role shares); the collector adds the round: the tally, the wait, the aggregator.
    ``participants`` (if known) is the whole job's roster: anyone else is refused as
    ``unknown_sender``. ``rejections`` counts refusals over the whole job, for metrics exporters.
    NaN/Inf is left to the aggregator, which checks it anyway (FedAvg fused with its fold, so
    the verdict on a held update may come only at :meth:`settle` or :meth:`close`).
    ``max_examples`` bounds the examples one update may claim (``too_many_examples``): FedAvg
    weighs by the claim, so without a bound one insider's claim outweighs every honest client.
    """

    def __init__(self, *, job_id: str, aggregator: Aggregator,
                 participants: Collection[str] | None = None,
                 logger: logging.Logger | None = None, label: str = "",
                 max_examples: int | None = None) -> None:
        self.job_id = job_id
        self.aggregator = aggregator
        self.participants = None if participants is None else frozenset(participants)
        self.admission = Admission(job_id=job_id, participants=participants, finite=False,
                                   logger=logger or logging.getLogger("foedus.collect"),
                                   label=label, max_examples=max_examples)
        self.current_round = 0  # 0 while no round is open: every update is then stale
        self.tally: Tally | None = None  # the open round's, or None
        self.offload = False
        self.lock = asyncio.Lock()  # guards the round state
        self._log = logger or logging.getLogger("foedus.collect")
        self._label = label  # prefixes log lines, e.g. "edge e1 "
        self._last: Tally = Tally(0)  # the latest round's, still read after close()
        #: one item per answer or refusal; :meth:`wait` recounts the answers on each
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()

    @property
    def rejections(self) -> Counter[str]:
        """Refused updates by reason over the whole job."""
        return self.admission.rejections

    @property
    def senders(self) -> set[str]:
        """Who answered in the open round (or the last one, once closed)."""
        return self._last.senders

    def trust(self, sender: str) -> None:
        """Admit ``sender`` besides the participants: an in-graph pod (the secure-sum server)
        whose one update stands for several participants, see :meth:`offer_sum`."""
        self.admission.trusted.add(sender)

    async def open(self, rnd: int, global_params: Params,
                   selected: Collection[str] | None = None) -> None:
        """Start round ``rnd`` from ``global_params``; ``selected``: the only senders sampled."""
        async with self.lock:
            self.current_round = rnd
            self.tally = self._last = Tally(rnd)
            # names, shapes and dtypes are the aggregator's to check (Aggregator.accept): it
            # knows what an update looks like, which for tree ensembles is not the broadcast's
            self.admission.open(rnd, None, selected)
            self.aggregator.reset(global_params)
            self.offload = sum(a.size for a in global_params.values()) >= OFFLOAD_VALUES
            while not self.arrivals.empty():
                self.arrivals.get_nowait()

    async def close(self) -> Tally:
        """End the round: later updates for it are refused as stale. Updates the aggregator
        refuses only now (it may fold them in late, see :meth:`Aggregator.settle`) move from
        accepted to rejected."""
        async with self.lock:
            tally = self._last
            if self.tally is not None:
                await self._settle(final=True)
            self.current_round = 0
            self.tally = None
            self.admission.close()
        return tally

    async def settle(self) -> None:
        """Take the aggregator's verdicts on the updates it holds now rather than at close
        (moving refused ones from accepted to rejected)."""
        async with self.lock:
            if self.tally is not None:
                await self._settle(final=False)

    async def _settle(self, *, final: bool) -> None:
        assert self.tally is not None
        late = await self.blocking(partial(self.aggregator.settle, final=final))
        for msg, exc in late:
            self.tally.withdraw(msg)
            self.reject(msg, exc)

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

    async def offer(self, msg: Message) -> bool:
        """Admit one sender's update or failure, or refuse it with a reason; True if admitted
        (an aggregator may still refuse a held update later, see :meth:`settle`). A message
        refused by the envelope checks is not an answer: its sender may still send a valid one;
        one refused for its content is its sender's answer."""
        async with self.lock:
            admitted = await self._offer(msg)
        self.notify()
        return admitted

    async def _offer(self, msg: Message) -> bool:
        try:
            self.admission.check_envelope(msg)
        except RejectedUpdate as exc:
            self.reject(msg, exc)
            return False
        tally = self.tally
        assert tally is not None  # the envelope check refuses everything between rounds
        tally.senders.add(msg.sender)
        try:
            self.admission.admit(msg)
        except RejectedUpdate as exc:
            self.reject(msg, exc)
            return False
        if msg.kind is Kind.ERROR or msg.error is not None:
            tally.failed_clients.append(msg.sender)
            self._log.warning("%sround %d: %.64r failed: %.200s", self._label, msg.round,
                              msg.sender, msg.error)
            return True
        if not await self._fold(msg):
            return False
        tally.admit(msg)
        return True

    async def offer_sum(self, msg: Message, survivors: Sequence[str],
                        dropped: Sequence[str]) -> bool:
        """Admit one update that stands for ``survivors`` (a secure sum: the individual updates
        never reach the server), from a sender made :meth:`trust`-ed; ``dropped`` are counted as
        failed. The sum passes the same admission as any update (one per round, no replay, the
        model's shape, ...); the aggregator's verdict on it is taken at once."""
        async with self.lock:
            admitted = await self._offer_sum(msg, survivors, dropped)
        self.notify()
        return admitted

    async def _offer_sum(self, msg: Message, survivors: Sequence[str],
                         dropped: Sequence[str]) -> bool:
        try:
            self.admission.check_envelope(msg)
            if self.participants is not None and not self.participants.issuperset(
                    [*survivors, *dropped]):
                raise RejectedUpdate(UNKNOWN_SENDER, "the sum names clients that are not "
                                                     "participants")
        except RejectedUpdate as exc:
            self.reject(msg, exc)
            return False
        tally = self.tally
        assert tally is not None
        tally.senders.update(survivors, dropped)
        tally.failed_clients.extend(dropped)
        try:
            self.admission.admit(msg, claimants=len(survivors))
        except RejectedUpdate as exc:
            self.reject(msg, exc)
            return False
        if msg.kind is Kind.ERROR or msg.error is not None:
            self._log.warning("%sround %d: %.200s", self._label, msg.round, msg.error)
            return True
        if not await self._fold(msg):
            return False
        late = await self.blocking(self.aggregator.settle)  # the verdict now, not at close
        if late:
            self.reject(msg, late[0][1])
            return False
        tally.accepted += len(survivors)
        tally.num_examples += msg.num_examples
        return True

    async def _fold(self, msg: Message) -> bool:
        """Hand an admitted update to the aggregator; False (counted) if it refuses it."""
        try:
            await self.blocking(self.aggregator.accept, msg)
        except RejectedUpdate as exc:
            self.reject(msg, exc)
            return False
        except Exception as exc:  # a bug in the aggregator: the round must go on
            # a peer's update triggered it, so one line per update (the traceback at DEBUG):
            # a sender repeating it must not flood the log
            self._log.error("%saggregator %s failed on the update from %.64r: %s: %.200s",
                            self._label, self.aggregator.describe(), msg.sender,
                            type(exc).__name__, exc)
            self._log.debug("the aggregator's traceback", exc_info=exc)
            self.reject(msg, RejectedUpdate(
                "aggregator_error", f"{type(exc).__name__}: {exc}"))
            return False
        return True

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model-sized work in a worker thread for large models, inline for small ones:
        a thread hop costs more than folding in or evaluating a small model."""
        if self.offload:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def reject(self, msg: Message, exc: RejectedUpdate) -> None:
        """Count a refusal for the job and for the round during which it arrived."""
        self.admission.reject(msg, exc)
        if self.tally is not None:
            self.tally.rejected[exc.reason] = self.tally.rejected.get(exc.reason, 0) + 1

    def check(self, msg: Message) -> None:
        """Raise :class:`RejectedUpdate` unless ``msg`` would be admitted now (recording it as
        an answer: a second call with the same message is a replay)."""
        self.admission.admit(msg)


def weighted_mean(items: list[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric averaged over the items that report it, weighted by their examples."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + n * value
            weights[key] = weights.get(key, 0.0) + n
    return {k: totals[k] / weights[k] for k in totals if weights[k] > 0}
