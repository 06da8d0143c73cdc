"""What every vertical protocol shares: who the parties are, how they meet and align, how
their messages are addressed, checked and refused.

Two protocols run on this plumbing: the Paillier linear model (:mod:`foedus.vertical.pods`)
and split learning (:mod:`foedus.vertical.split_pods`). Both have one label party that drives
(:class:`LabelSide`) and feature parties that answer (:class:`FeatureSide`), on one pair of
wires each (``request``/``reply``); both start the same way::

    F -> L  hello       until F has heard from L (L may start later, messages are not kept)
    L -> F  psi         L's ids, encrypted under L's PSI key            (foedus.vertical.psi)
    F -> L  psi         F's PSI setup and its answer to L's request
    L -> F  align       the salted digests of the common train and test ids (the row order)
                        and the salt, with whatever the protocol adds
    ...                 the protocol's own steps
    L -> F  stop

Every message names its step in ``meta["step"]`` and its run in ``meta["run"]`` (a random id
the label party draws, so leftovers of an earlier run are refused). Nothing a peer sends can
crash a party: everything is checked and anything else is refused, counted under a reason in
``rejected`` and logged in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink
from foedus.vertical.linear import Task
from foedus.vertical.psi import PsiQuerier, PsiResponder, order_of, rows_in_order

log = logging.getLogger("foedus.vertical")

#: seconds between a feature party's hellos while it waits for the label party
HELLO_INTERVAL = 0.5
#: the largest PSI message or answer a party reads
PSI_LIMIT = 64 * 1024 * 1024


def u8(data: bytes) -> np.ndarray:
    """Bytes as the ``uint8`` array they travel as."""
    return np.frombuffer(data, np.uint8)


def array(msg: Message, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``msg.params[name]`` if it has exactly this dtype and shape, else :class:`ValueError`."""
    value = msg.params.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype) \
            or value.shape != shape:
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else "nothing"
        raise ValueError(f"{name!r} must be {np.dtype(dtype)} {shape}, got {got}")
    return value


def as_bytes(msg: Message, name: str, limit: int) -> bytes:
    """``msg.params[name]`` as bytes, if it is a 1-d ``uint8`` array of 1 to ``limit`` bytes."""
    value = msg.params.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 1 \
            or not 0 < value.size <= limit:
        raise ValueError(f"{name!r} must be 1 to {limit} bytes")
    return value.tobytes()


@dataclass
class Rejections:
    """Refused messages by reason, each logged in one line."""

    who: str
    counts: Counter[str] = field(default_factory=Counter)

    def __call__(self, reason: str, msg: Message | None, detail: str) -> None:
        self.counts[reason] += 1
        sender = msg.sender if msg is not None else "?"
        log.warning("%s refused a message from %r (%s): %.300s", self.who, sender, reason, detail)


@dataclass
class RoundResult:
    """One round as the label party saw it (the topology turns it into a RoundRecord)."""

    round: int
    metrics: dict[str, float]
    duration_s: float
    rejected: dict[str, int]


class LabelSide(Pod):
    """The label party's plumbing: waits for every party, aligns, collects checked answers.

    ``train``/``test``: its ids, columns and labels of its train and held-out entities.
    ``parties``: the feature parties' names. ``round_timeout``: how long it waits for a step's
    answers; a party that does not answer stops the job (its columns cannot be done without)
    with ``stop_reason``. Subclasses write :meth:`_protocol`.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("reply"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("request"),)
    #: steps sent as CONTROL messages (the others carry model traffic: MODEL)
    control_steps: ClassVar[tuple[str, ...]] = ("psi", "align", "stop")

    def __init__(
        self, *, job_id: str, party: str, parties: Sequence[str], task: Task,
        train: tuple[Sequence[str], np.ndarray, np.ndarray],
        test: tuple[Sequence[str], np.ndarray, np.ndarray], rounds: int,
        round_timeout: float = 60.0, join_timeout: float | None = None,
    ) -> None:
        super().__init__(party)
        self.job_id, self.party, self.parties = job_id, party, list(parties)
        self.task, self.rounds = task, rounds
        self.round_timeout, self.join_timeout = round_timeout, join_timeout
        self.train_ids, self.train_x, self.train_y = list(train[0]), train[1], train[2]
        self.test_ids, self.test_x, self.test_y = list(test[0]), test[1], test[2]
        self.history: list[RoundResult] = []
        self.round_listeners: list[Callable[[RoundResult], None]] = []
        self.rejected = Rejections(party)
        self.stop_reason: str | None = None
        self.common: tuple[int, int] = (0, 0)  # aligned train and test rows
        self.run_id = secrets.token_hex(8)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._hello: set[str] = set()
        self._joined = asyncio.Event()

    # ---- input --------------------------------------------------------------------------
    async def on_reply(self, msg: Message) -> None:
        if msg.sender not in self.parties:
            self.rejected("unknown_party", msg, f"not a party of this job: {self.parties}")
            return
        if msg.meta.get("step") == "hello":
            self._hello.add(msg.sender)
            if self._hello >= set(self.parties):
                self._joined.set()
            return
        if msg.meta.get("run") != self.run_id:
            self.rejected("other_run", msg, f"run {msg.meta.get('run')!r}")
            return
        self._inbox.put_nowait(msg)

    def _expected(self, msg: Message, step: str, round_: int) -> bool:
        """Whether ``msg`` answers ``step`` of ``round_`` (a protocol may match more)."""
        return msg.meta.get("step") == step and msg.round == round_

    async def _collect(self, step: str, round_: int, check: Callable[[Message], Any],
                       parties: Sequence[str] | None = None,
                       on_silence: Callable[[list[str]], Any] | None = None,
                       ) -> dict[str, Any] | None:
        """Every party's checked answer to ``step`` of ``round_``, or ``None`` (after setting
        ``stop_reason``) when one has not answered within ``round_timeout``.

        ``on_silence(silent)``, when given, is awaited whenever a sixth of ``round_timeout``
        passes without an answer: a protocol may ask again (a party that restarted from its
        checkpoint may have lost the question)."""
        expected = set(self.parties if parties is None else parties)
        got: dict[str, Any] = {}
        refused: dict[str, str] = {}  # the last answer refused from each party, and why
        deadline = time.monotonic() + self.round_timeout
        while len(got) < len(expected):
            left = deadline - time.monotonic()
            wait = left if on_silence is None else min(left, self.round_timeout / 6)
            try:
                msg = await asyncio.wait_for(self._inbox.get(), max(wait, 0.0))
            except TimeoutError:
                silent = sorted(expected - set(got))
                if time.monotonic() < deadline and on_silence is not None:
                    await on_silence(silent)
                    continue
                self.stop_reason = (f"parties {silent} did not answer step {step!r} of round "
                                    f"{round_} within {self.round_timeout:g}s") + "".join(
                    f"; refused from {p}: {refused[p]}" for p in silent if p in refused)
                return None
            if not self._expected(msg, step, round_) or msg.sender in got \
                    or msg.sender not in expected:
                self.rejected("unexpected", msg, f"step {msg.meta.get('step')!r} of round "
                              f"{msg.round} while collecting {step!r} of round {round_}")
                continue
            if msg.error is not None:
                self.rejected("party_error", msg, msg.error)
                refused[msg.sender] = f"party_error ({msg.error:.150})"
                continue
            try:
                got[msg.sender] = check(msg)
            except Exception as exc:  # whatever a peer sends: refused, counted, never fatal
                self.rejected("malformed", msg, f"{type(exc).__name__}: {exc}")
                refused[msg.sender] = f"malformed ({type(exc).__name__}: {exc!s:.150})"
        return got

    async def _send(self, to: str, step: str, round_: int = 0,
                    params: Mapping[str, np.ndarray] | None = None, **meta: Any) -> None:
        kind = Kind.CONTROL if step in self.control_steps else Kind.MODEL
        await self.send("request", Message.create(
            kind, job_id=self.job_id, round=round_, sender=self.party, recipient=to,
            params=dict(params or {}), meta={"step": step, "run": self.run_id, **meta}))

    # ---- the driver ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._protocol()
        except Exception as exc:  # tell the parties before the failure is recorded
            self.stop_reason = f"the label party failed: {type(exc).__name__}: {exc}"
            await self._stop_all()
            raise
        await self._stop_all()

    async def _protocol(self) -> None:
        raise NotImplementedError

    async def _stop_all(self) -> None:
        for party in self.parties:
            await self._send(party, "stop", reason=self.stop_reason or "finished")

    async def _join(self) -> bool:
        """Wait for every party's hello; ``False`` (with ``stop_reason``) after
        ``join_timeout``."""
        try:
            await asyncio.wait_for(self._joined.wait(), self.join_timeout)
        except TimeoutError:
            self.stop_reason = (f"parties {sorted(set(self.parties) - self._hello)} did not "
                                f"join within {self.join_timeout:g}s")
            return False
        return True

    async def _intersect(self) -> tuple[bytes, np.ndarray, np.ndarray] | None:
        """PSI with every party; keeps this party's common rows, in the agreed order, and
        returns the salt and the orders (digests) of the common train and test ids to send
        with ``align``; ``None`` (with ``stop_reason``) when nothing can be trained."""
        mine = self.train_ids + self.test_ids
        queriers = {p: PsiQuerier(mine) for p in self.parties}
        for party, querier in queriers.items():
            await self._send(party, "psi", params={"request": u8(querier.request())})
        shared = await self._collect("psi", 0, lambda m: queriers[m.sender].shared(
            as_bytes(m, "setup", PSI_LIMIT), as_bytes(m, "response", PSI_LIMIT)))
        if shared is None:
            return None
        common = set(mine).intersection(*shared.values())
        salt = secrets.token_bytes(16)
        train_ids, train_order = order_of(salt, common & set(self.train_ids))
        test_ids, test_order = order_of(salt, common & set(self.test_ids))
        if not train_ids:
            self.stop_reason = "the parties hold no training entity in common"
            return None
        if not test_ids:  # the job's every metric is on these people: it could report none
            self.stop_reason = (
                f"the parties hold no held-out entity in common (and {len(train_ids)} "
                "training ones), so the model could not be evaluated; give the parties a "
                "larger share of the people or raise data.test_fraction")
            return None
        rows = {e: i for i, e in enumerate(self.train_ids)}
        keep = [rows[e] for e in train_ids]
        self.train_x, self.train_y = self.train_x[keep], self.train_y[keep]
        rows = {e: i for i, e in enumerate(self.test_ids)}
        keep = [rows[e] for e in test_ids]
        self.test_x, self.test_y = self.test_x[keep], self.test_y[keep]
        self.train_ids, self.test_ids = train_ids, test_ids
        self.common = (len(train_ids), len(test_ids))
        return salt, train_order, test_order

    def _record(self, result: RoundResult) -> None:
        self.history.append(result)
        for listener in self.round_listeners:
            listener(result)


class FeatureSide(Pod):
    """A feature party's plumbing: says hello, answers PSI, follows the order, stops.

    ``ids``/``x``: its entities and its columns of them (train and held-out alike: only the
    label party knows which is which, and tells it the order of each). ``idle_timeout``: once
    it has joined a run, how long it waits for the label party's next message before it ends
    (``stop_reason`` says so). ``join_timeout``: how long it says hello before that, waiting
    for a label party that may never come (``None``: for ever). Subclasses add their steps in
    :meth:`_steps`.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("request"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("reply"),)
    blocking = True  # PSI and the model's work are CPU work: a worker thread

    def __init__(self, *, job_id: str, party: str, label_party: str, task: Task,
                 ids: Sequence[str], x: np.ndarray, idle_timeout: float = 120.0,
                 max_ids: int = 10_000_000, keep_received: bool = False,
                 join_timeout: float | None = None) -> None:
        super().__init__(party)
        self.job_id, self.party, self.label_party = job_id, party, label_party
        self.task, self.ids, self.x = task, list(ids), np.asarray(x, np.float64)
        self.idle_timeout, self.max_ids = idle_timeout, max_ids
        self.join_timeout = join_timeout
        self.rejected = Rejections(party)
        self.stop_reason: str | None = None
        #: with ``keep_received``, every message that reached this party (for audits)
        self.received: list[Message] = []
        self.keep_received = keep_received
        self.run_id: str | None = None
        self._heard = time.monotonic()
        self._joined = asyncio.Event()
        self._finished = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._resumed()
        give_up = None if self.join_timeout is None else time.monotonic() + self.join_timeout
        while not self._joined.is_set():
            if give_up is not None and time.monotonic() >= give_up:
                self.stop_reason = (f"the label party {self.label_party!r} did not answer "
                                    f"within {self.join_timeout:g}s")
                log.warning("%s: %s", self.party, self.stop_reason)
                return
            await self.send("reply", self._message(Kind.CONTROL, "hello", 0, {}))
            wait = HELLO_INTERVAL if give_up is None else \
                min(HELLO_INTERVAL, max(give_up - time.monotonic(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._joined.wait(), wait)
        while not self._finished.is_set():
            try:
                await asyncio.wait_for(self._finished.wait(), self.idle_timeout)
            except TimeoutError:
                if time.monotonic() - self._heard >= self.idle_timeout:
                    self.stop_reason = (f"no message from {self.label_party!r} for "
                                        f"{self.idle_timeout:g}s")
                    return

    async def _resumed(self) -> None:
        """Hook: a party restored from a checkpoint rejoins its run here (it sets
        ``_joined`` and re-sends what it last sent)."""

    def _message(self, kind: Kind, step: str, round_: int,
                 params: Mapping[str, np.ndarray], **meta: Any) -> Message:
        return Message.create(kind, job_id=self.job_id, round=round_, sender=self.party,
                              recipient=self.label_party, params=dict(params),
                              meta={"step": step, "run": self.run_id or "", **meta})

    def _set(self, event: asyncio.Event) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(event.set)

    def _steps(self) -> dict[str, Callable[[Message], None]]:
        """The handler of each step this party answers (subclasses add theirs)."""
        return {"psi": self._psi, "stop": self._stop}

    def on_request(self, msg: Message) -> None:
        if self.keep_received:
            self.received.append(msg)
        if msg.sender != self.label_party or msg.header.recipient != self.party:
            self.rejected("not_for_me", msg, f"from {msg.sender!r} to {msg.header.recipient!r}")
            return
        step = msg.meta.get("step")
        if step != "psi" and msg.meta.get("run") != self.run_id:
            self.rejected("other_run", msg, f"run {msg.meta.get('run')!r}")
            return
        handler = self._steps().get(str(step))
        if handler is None:
            self.rejected("unknown_step", msg, f"step {step!r}")
            return
        try:
            handler(msg)
        except Exception as exc:  # whatever a peer sends: refused, counted, never fatal
            self.rejected("malformed", msg, f"step {step!r}: {type(exc).__name__}: {exc}")
            return
        self._heard = time.monotonic()

    def _psi(self, msg: Message) -> None:
        run = msg.meta.get("run")
        if not isinstance(run, str) or not run:
            raise ValueError("a PSI request without a run id")
        setup, response = PsiResponder(self.ids, max_request=self.max_ids).respond(
            as_bytes(msg, "request", PSI_LIMIT))
        self.run_id = run
        self._new_run()
        self._set(self._joined)
        self.emit("reply", self._message(Kind.UPDATE, "psi", 0,
                                         {"setup": u8(setup), "response": u8(response)}))

    def _new_run(self) -> None:
        """Hook: forget the previous run's state (a new PSI request starts a new run)."""

    def _order(self, msg: Message) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The salt and this party's rows (indices into ``ids``) of the common train and
        test entities that ``align`` names; :class:`ValueError` for an order it cannot
        follow."""
        salt = as_bytes(msg, "salt", 64)
        train = rows_in_order(salt, msg.params.get("train", np.zeros(0)), self.ids)
        test = rows_in_order(salt, msg.params.get("test", np.zeros(0)), self.ids)
        if not len(train) or set(train.tolist()) & set(test.tolist()):
            raise ValueError("an empty training order, or a row both in training and test")
        return salt, train, test

    def _stop(self, msg: Message) -> None:
        reason = msg.meta.get("reason")
        if reason != "finished":
            self.stop_reason = f"the label party stopped: {reason}"
        self._set(self._joined)
        self._set(self._finished)


@dataclass(frozen=True)
class Topics:
    """Where a vertical job's messages go: every party's replies on ``label``, the label
    party's requests to party ``P`` on ``party(P)`` (so a party reads only its own)."""

    prefix: str  # e.g. foedus.<job>.vertical

    @property
    def label(self) -> str:
        return f"{self.prefix}.label"

    def party(self, name: str) -> str:
        return f"{self.prefix}.party.{name}"


def label_graph(pod: LabelSide, transport: Transport, topics: Topics) -> Graph:
    """The label party's graph: replies in, requests out to each recipient's own topic."""
    replies = Downlink(transport, topics.label, job_id=pod.job_id, name="replies_in")
    requests = Uplink(transport, lambda m: topics.party(m.header.recipient or ""),
                      name="requests_out")
    graph = Graph(f"{pod.job_id}/vertical/{pod.party}").add(replies, pod, requests)
    graph.connect("replies_in.out", f"{pod.name}.reply")
    graph.connect(f"{pod.name}.request", "requests_out.in")
    return graph


def feature_graph(pod: FeatureSide, transport: Transport, topics: Topics,
                  group: str | None = None) -> Graph:
    """A feature party's graph: its own topic in, replies out to the label party's.

    ``group`` makes its reading position durable on transports that keep one (Kafka): a
    party that restarts reads on from where it stopped, and what was published while it was
    away waits for it."""
    requests = Downlink(transport, topics.party(pod.party), job_id=pod.job_id,
                        name="requests_in", group=group)
    replies = Uplink(transport, topics.label, name="replies_out")
    graph = Graph(f"{pod.job_id}/vertical/{pod.party}").add(requests, pod, replies)
    graph.connect("requests_in.out", f"{pod.name}.request")
    graph.connect(f"{pod.name}.reply", "replies_out.in")
    return graph
