"""Secure aggregation over pods and transports: the :mod:`foedus.privacy.secagg` protocol as
messages, so it runs over every transport, store-and-forward ones (Kafka) included.

One secure sum runs *inside* one FL round, as extra message exchanges::

    client:  model_in -> client -> [filters] -> secagg_client -> update_out ~> updates topic
                                   secagg_in (secagg.down topic) -> secagg_client
    server:  updates_in -> [filters] -> secagg_server -> server -> model_out ~> model topic
                                        secagg_server.down -> secagg_out ~> secagg.down topic

Client -> server protocol messages travel on the job's ordinary updates topic (the server-side
pod consumes them before the :class:`ServerPod` sees anything); server -> client messages on a
dedicated, non-retained topic ``foedus.<job>.secagg.down``. Every message is a ``CONTROL``
message whose ``meta["secagg"]`` names the step; keys and encrypted shares travel in ``meta`` as
bytes (dict keys are client numbers as strings, which msgpack maps require), the masked vector as
the ``masked`` array. Steps advance when every expected party answered or ``step_timeout``
passed with at least ``threshold`` answers; fewer ends the round's sum with an ``ERROR`` (never a
wrong sum, never an unmasked update).

**Why the server emits a mean.** Each client secure-sums ``[w * flat(params), w]`` with ``w`` its
example count (``weighting="examples"``) or 1 (``"uniform"``), so the example counts stay
hidden too. The server-side pod unmasks ``sum(w_i p_i)`` and ``W = sum(w_i)``, and emits ONE
update with ``params = sum / W`` (FedAvg's weighted mean) and ``num_examples = W``; any
aggregator that returns the mean of one update (FedAvg, server-momentum rules) is then exact.
:class:`~foedus.roles.secure_server.SecureServerPod` counts that update as one answer per
survivor (and each dropout as a failed client), so quorum and round completion behave as
without secure aggregation. Robust rules (median, Krum) need individual updates and cannot
work on a sum.

Where the rest lives (so that ``privacy`` imports nothing from ``roles`` or ``topology``):
:class:`~foedus.roles.secure_server.SecureServerPod` (the round loop's side) in
:mod:`foedus.roles.secure_server`; the graph recipes (``secure_server_graph``,
``secure_client_graph``, ``run_secure_aggregation_job``, ``SecureJob``) in
:mod:`foedus.topology.secure_sum`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import ConfigError
from foedus.core.filter import Filter, Stage, stages
from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.core.pod import Pod, Wire
from foedus.privacy.clip import shown
from foedus.privacy.secagg import (
    AdvertiseKeys,
    MaskedInput,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

#: the extra this module's plugins need (`pip install foedus[privacy]`), for `foedus plugins`
REQUIRES_EXTRA = "privacy"

log = logging.getLogger("foedus.privacy.secagg")

STEP = "secagg"  # meta key naming the protocol step
SUMMARY = "secagg_sum"  # meta key of the summed update: survivors and dropouts
MASKED = "masked"  # array name of the masked vector

#: Why a protocol message is refused (the keys of the pods' ``rejected`` counters; the server
#: pod's also reach the round record). A refused message is not the sender's answer: an honest
#: answer may still follow; a participant that never answers validly counts as a dropout.
WRONG_JOB = "wrong_job"
UNKNOWN_SENDER = "unknown_sender"  # not a participant of the sum
STALE_ROUND = "stale_round"  # for a round whose sum is over
DUPLICATE = "duplicate"  # a second answer of one participant to one step (a replay, too)
OUT_OF_STEP = "secagg_out_of_step"  # not the step that is open, or an id not the sender's
MALFORMED = "secagg_malformed"
EQUIVOCATION = "secagg_equivocation"  # a second, different answer to one step
EXCLUDED = "secagg_excluded"  # from a participant excluded for equivocating earlier
#: a participant the protocol found breaking it (counted once per round, named in the log and
#: in the summed update's summary: see :attr:`foedus.privacy.secagg.SecAggServer.misbehaviour`)
MISBEHAVED = "secagg_misbehaved"  # a step's message without what the step needs


@dataclass(frozen=True)
class SecureSumSettings:
    """What the client and server pods of one job must agree on (besides the participants).

    ``value_range`` bounds ``|w * parameter|`` (with ``w`` the client's weight), checked on the
    client before anything is sent; the 64-bit ring with 20 fraction bits leaves room for
    ``value_range`` up to about ``2^42 / num_clients``.
    """

    max_dropouts: int
    value_range: float = 1.0e6
    scale_bits: int = 20
    ring_bits: int = 64
    weighting: str = "examples"  # or "uniform"
    step_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.weighting not in ("examples", "uniform"):
            raise ConfigError(f"weighting must be 'examples' or 'uniform', got {self.weighting!r}")
        if self.max_dropouts < 0:
            raise ConfigError(f"max_dropouts must be >= 0, got {self.max_dropouts}")
        if self.step_timeout <= 0:
            raise ConfigError(f"step_timeout must be positive, got {self.step_timeout}")

    def config(self, num_clients: int, vector_size: int, job_id: str, rnd: int) -> SecAggConfig:
        """The session config of one round; the session string binds keys and masks to it."""
        return SecAggConfig.tolerating(
            num_clients, self.max_dropouts, vector_size, value_range=self.value_range,
            scale_bits=self.scale_bits, ring_bits=self.ring_bits,
            session=f"foedus-secagg/{job_id}/round-{rnd}".encode(),
        )


def secagg_topic(job_id: str) -> str:
    """The server -> clients protocol topic (not retained: messages belong to one round)."""
    return f"foedus.{job_id}.secagg.down"


def numbering(participants: Sequence[str]) -> dict[str, int]:
    """Client id -> protocol number 1..n (Shamir x-coordinates), the same on every party."""
    ordered = sorted(participants)
    if len(set(ordered)) != len(ordered):
        raise ConfigError("participants must be distinct")
    return {c: i + 1 for i, c in enumerate(ordered)}


def flatten(params: Params) -> np.ndarray:
    """Parameters in sorted-name order as one float64 vector (both sides use this order)."""
    return np.concatenate([np.asarray(params[k], np.float64).ravel() for k in sorted(params)]) \
        if params else np.zeros(0)


def unflatten(vector: np.ndarray, template: Params) -> dict[str, np.ndarray]:
    """The inverse of :func:`flatten`, keeping ``template``'s names, order, shapes and dtypes."""
    pieces: dict[str, np.ndarray] = {}
    at = 0
    for k in sorted(template):
        ref = np.asarray(template[k])
        pieces[k] = vector[at:at + ref.size].reshape(ref.shape).astype(ref.dtype)
        at += ref.size
    if at != vector.size:
        raise SecAggError(f"the summed vector has {vector.size} values, the model {at}")
    return {k: pieces[k] for k in template}


def _bytes_map(value: Any, what: str) -> dict[int, bytes]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k.isdigit() and isinstance(v, bytes) for k, v in value.items()
    ):
        raise SecAggError(f"malformed {what}: expected a map of client numbers to bytes")
    return {int(k): v for k, v in value.items()}


def _complaints(value: Any) -> dict[int, str]:
    """A masked answer's complaints (dealer number -> why its share was unusable)."""
    if not isinstance(value, Mapping) or len(value) > 100_000 or not all(
        isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in value.items()
    ):
        raise SecAggError("malformed complaints: expected a map of client numbers to reasons")
    return {int(k): v[:200] for k, v in value.items()}


def _same_answer(first: Message, again: Message) -> bool:
    """True when ``again`` repeats ``first`` (a redelivery, or a resend of the same content);
    False when it says something else: equivocation."""
    if again.header.message_id == first.header.message_id:
        return True
    if set(again.params) != set(first.params) or any(
            not np.array_equal(np.asarray(first.params[k]), np.asarray(again.params[k]))
            for k in first.params):
        return False
    return bool(again.meta == first.meta)


def _str_keys(table: Mapping[int, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in table.items()}


def _reason(exc: Exception) -> str:
    """Why a step failed, in one line: the protocol's own words, else the exception's type
    (a library refusing what a participant sent; never a traceback per round)."""
    return str(exc) if isinstance(exc, SecAggError) else f"{type(exc).__name__}: {exc}"


# ---- the client side --------------------------------------------------------------------------
class SecAggClientPod(Pod):
    """Performs a client's protocol steps for each update it receives on ``in``.

    The update itself never leaves this pod: only public keys, encrypted shares, the masked
    vector and unmasking shares do. Any failure (a value out of range, a bad server message)
    abandons the round's session without revealing anything; the server sees a dropout.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"), Wire("down"))
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)

    def __init__(self, *, client_id: str, participants: Sequence[str],
                 settings: SecureSumSettings, name: str = "secagg_client") -> None:
        super().__init__(name)
        numbers = numbering(participants)
        if client_id not in numbers:
            raise ConfigError(f"client {client_id!r} is not among the participants")
        self.client_id = client_id
        self.number = numbers[client_id]
        self.num_clients = len(numbers)
        self.settings = settings
        self._round = 0
        self._job = ""
        self._session: SecAggClient | None = None
        self._vector: np.ndarray | None = None
        #: server messages that ended this client's part in a round, by reason
        self.rejected: Counter[str] = Counter()

    async def on_in(self, msg: Message) -> None:
        if msg.kind is not Kind.UPDATE or msg.error is not None:
            await self.send("out", msg)  # failures travel as values; the server skips us
            return
        if msg.trail:
            await self.send("out", self._error(msg, f"filters {list(msg.trail)} ran before "
                                               "secure masking and cannot be undone after it"))
            return
        try:
            vector, session = await asyncio.to_thread(self._prepare, msg)
        except (SecAggError, ConfigError) as exc:
            await self.send("out", self._error(msg, str(exc)))
            return
        self._round, self._job, self._session, self._vector = (
            msg.round, msg.header.job_id, session, vector)
        advert = session.advertise()
        await self.send("out", self._control("advertise", {
            "id": self.number, "c": advert.c_public, "s": advert.s_public,
            "h": advert.commitment}))

    def _prepare(self, msg: Message) -> tuple[np.ndarray, SecAggClient]:
        """The weighted vector and a session, range-checked before any key leaves (in a worker
        thread: flattening and checking a large model would stall the event loop)."""
        weight = float(msg.num_examples) if self.settings.weighting == "examples" else 1.0
        vector = np.append(flatten(msg.params) * weight, weight)
        cfg = self.settings.config(self.num_clients, vector.size, msg.header.job_id, msg.round)
        cfg.encode(vector)
        return vector, SecAggClient(cfg, self.number)

    async def on_down(self, msg: Message) -> None:
        if msg.round != self._round or self._session is None or msg.kind is not Kind.CONTROL:
            return  # another round's protocol message, or no session
        if msg.header.recipient not in (None, self.client_id):
            return
        step = msg.meta.get(STEP)
        try:
            if step == "roster":
                await self.on_roster(msg)
            elif step == "shares":
                await self.on_shares(msg)
            elif step == "unmask":
                await self.on_unmask(msg)
            elif step == "abort":
                log.warning("client %s: secure sum of round %d aborted: %s", self.client_id,
                            msg.round, msg.meta.get("reason"))
                self._session = self._vector = None
        except Exception as exc:  # whatever a server message does: abandon
            # the down topic is not signed: a malformed message is a refusal, never a traceback;
            # abandoning reveals nothing further (the server sees a dropout)
            reason = "secagg_error" if isinstance(exc, SecAggError | ConfigError) else MALFORMED
            self.rejected[reason] += 1
            log.warning("client %s: leaving secure sum of round %d (%s): %s: %.200s",
                        self.client_id, msg.round, reason, type(exc).__name__, exc)
            self._session = self._vector = None

    async def on_roster(self, msg: Message) -> None:
        assert self._session is not None
        raw = msg.meta.get("keys")
        if not isinstance(raw, Mapping):
            raise SecAggError("malformed roster")
        keys = {int(k): (bytes(v[0]), bytes(v[1])) for k, v in raw.items()}
        shares = self._session.share_keys(Roster(keys))
        await self.send("out", self._control("shares", {
            "id": self.number, "ct": _str_keys(shares.ciphertexts)}))

    async def on_shares(self, msg: Message) -> None:
        """Step 2: mask the vector with the delivered shares (override to simulate a dropout)."""
        session, vector = self._session, self._vector
        assert session is not None and vector is not None
        delivered = _bytes_map(msg.meta.get("ct"), "share delivery")
        masked = await asyncio.to_thread(session.masked_input, vector, delivered)
        self._vector = None  # the plain update is no longer needed
        meta: dict[str, Any] = {"id": self.number}
        if masked.complaints:  # dealers whose share to me was unusable: the server names them
            meta["complaints"] = _str_keys(masked.complaints)
        await self.send("out", self._control("masked", meta, params={MASKED: masked.masked}))

    async def on_unmask(self, msg: Message) -> None:
        assert self._session is not None
        request = UnmaskRequest(tuple(msg.meta.get("survivors", ())),
                                tuple(msg.meta.get("dropped", ())))
        answer = self._session.unmask(request)
        self._session = None
        await self.send("out", self._control("unmask", {
            "id": self.number, "s": _str_keys(answer.s_shares), "b": _str_keys(answer.b_shares)}))

    def _control(self, step: str, meta: dict[str, Any], params: Params | None = None) -> Message:
        return Message.create(Kind.CONTROL, job_id=self._job, round=self._round,
                              sender=self.client_id, meta={STEP: step, **meta}, params=params)

    def _error(self, msg: Message, reason: str) -> Message:
        # ERROR, as a client failing its training: the command line shows ERROR only, and this
        # is the one place the client's reason (e.g. value_range) is said
        log.error("client %s: not taking part in round %d's secure sum: %s", self.client_id,
                  msg.round, reason)
        return Message.create(Kind.ERROR, job_id=msg.header.job_id, round=msg.round,
                              sender=self.client_id, error=f"secure sum: {reason}")


# ---- the server side --------------------------------------------------------------------------
@dataclass
class _Session:
    """The server's state of one round's secure sum."""

    round: int
    server: SecAggServer
    step: str = "advertise"
    adverts: dict[int, AdvertiseKeys] = field(default_factory=dict)
    shares: dict[int, ShareKeys] = field(default_factory=dict)
    masked: dict[int, MaskedInput] = field(default_factory=dict)
    answers: dict[int, UnmaskResponse] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)  # clients that sent an ERROR instead
    #: clients that equivocated (two different answers to one step): ignored from then on
    excluded: set[int] = field(default_factory=set)
    #: the answer each client gave first to each step, to tell a redelivery from equivocation
    firsts: dict[tuple[str, int], Message] = field(default_factory=dict)
    named: set[int] = field(default_factory=set)  # misbehaving clients already reported
    timer: asyncio.Task[None] | None = None


class SecAggServerPod(Pod):
    """Runs the server's protocol steps and emits one summed update per round on ``out``.

    Placed between the updates downlink and the :class:`SecureServerPod`. Individual updates
    never reach ``out``: only the unmasked mean of the survivors, and clients' ``ERROR``
    messages (a client that failed before the protocol is skipped like any failed client).
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"), Wire("down"))

    def __init__(self, *, job_id: str, template: Params, participants: Sequence[str],
                 settings: SecureSumSettings, name: str = "secagg_server",
                 open_round: Callable[[], int | None] | None = None) -> None:
        super().__init__(name)
        self.job_id = job_id
        #: the round the server has open (None between rounds); when given, only a message
        #: for it may start a new round's sum: one message naming a later round used to
        #: discard the running sum, and one naming round 10**9 every sum after it
        self.open_round = open_round
        self.template = {k: np.asarray(v) for k, v in template.items()}
        self.numbers = numbering(participants)
        self.names = {n: c for c, n in self.numbers.items()}
        self.settings = settings
        self.vector_size = int(sum(a.size for a in self.template.values())) + 1
        self.cfg_check = settings.config(len(self.numbers), self.vector_size, job_id, 0)
        self._session: _Session | None = None
        self._lock = asyncio.Lock()
        #: protocol seconds spent by the server per round (unmasking), for benchmarks
        self.server_seconds: dict[int, float] = {}
        #: refused protocol messages by reason, and those not yet in a round record
        self.rejected: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()

    async def on_in(self, msg: Message) -> None:
        async with self._lock:
            await self._handle(msg)

    def refuse(self, msg: Message, reason: str, detail: str) -> None:
        """Count a refused protocol message and log one line (no traceback): hostile input is
        the normal course of things. The message is dropped; the sender has not answered."""
        self.rejected[reason] += 1
        self.pending[reason] += 1
        log.warning("secure sum round %d: refused a message from %.64r: %s: %.200s",
                    msg.round, msg.sender, reason, detail)

    def take_pending(self) -> dict[str, int]:
        """The refusals since the previous call (for the round record)."""
        taken, self.pending = dict(self.pending), Counter()
        return taken

    async def _handle(self, msg: Message) -> None:
        if msg.header.job_id != self.job_id:
            self.refuse(msg, WRONG_JOB, f"for job {msg.header.job_id!r}")
            return
        number = self.numbers.get(msg.sender)
        if number is None:
            self.refuse(msg, UNKNOWN_SENDER, "not a participant of the secure sum")
            return
        if self.open_round is not None and (self._session is None
                                            or msg.round > self._session.round):
            now = self.open_round()
            if msg.round != now:
                self.refuse(msg, STALE_ROUND, f"round {msg.round} is not open (open: {now})")
                return
        session = self._session_for(msg.round)
        if session is None:
            self.refuse(msg, STALE_ROUND, "the sum of that round is over")
            return
        if msg.kind is Kind.ERROR or msg.error is not None:
            if number in session.failed:
                self.refuse(msg, DUPLICATE, "a second failure report")
                return
            session.failed.add(number)
            await self.send("out", msg)
            await self._maybe_advance(session)
            return
        step = msg.meta.get(STEP)
        if number in session.excluded:
            self.refuse(msg, EXCLUDED, "it equivocated earlier in this round")
            return
        first = session.firsts.get((step, number)) if isinstance(step, str) else None
        if first is not None and not _same_answer(first, msg):
            self.refuse(msg, EQUIVOCATION, f"a second, different answer to step {step}")
            await self._exclude(session, number, f"equivocated: sent two different {step!r} "
                                                 "answers")
            return
        if isinstance(step, str) and number in self._tables(session).get(step, {}):
            self.refuse(msg, DUPLICATE, f"already answered step {step}")  # also once it closed
            return
        if msg.kind is not Kind.CONTROL or step != session.step \
                or msg.meta.get("id") != number:
            self.refuse(msg, OUT_OF_STEP, f"a {msg.kind.value} message for step {step!r:.40} "
                                          f"(id {msg.meta.get('id')!r:.20}) while step "
                                          f"{session.step} is open")
            return
        try:
            self._take(session, number, step, msg)
        except SecAggError as exc:
            self.refuse(msg, MALFORMED, str(exc))
            return
        session.firsts[(step, number)] = msg
        await self._maybe_advance(session)

    async def _exclude(self, session: _Session, number: int, why: str) -> None:
        """Leave an equivocating client out of the rest of the round: its answer to the open
        step is dropped (it becomes a dropout there, which the protocol survives); an answer to
        a step already closed is in the sum's bookkeeping and stays (it is named)."""
        session.server.blame(number, why)
        session.excluded.add(number)
        self._tables(session).get(session.step, {}).pop(number, None)  # type: ignore[attr-defined]
        self._name(session)
        await self._maybe_advance(session)

    def _name(self, session: _Session) -> None:
        """Log each participant the protocol found misbehaving, once, and count it."""
        for number, why in session.server.misbehaviour.items():
            if number not in session.named:
                session.named.add(number)
                self.rejected[MISBEHAVED] += 1
                self.pending[MISBEHAVED] += 1
                log.warning("secure sum round %d: participant %r misbehaved: %.200s",
                            session.round, self.names.get(number, number), why)

    def _take(self, session: _Session, number: int, step: str, msg: Message) -> None:
        """Book one participant's answer to the open step; raises :class:`SecAggError` when
        the message does not carry what the step needs (the protocol library judges the rest:
        sizes, keys and shares, see :class:`~foedus.privacy.secagg.SecAggServer`)."""
        if step == "advertise":
            c, s, h = msg.meta.get("c"), msg.meta.get("s"), msg.meta.get("h")
            if not isinstance(c, bytes) or not isinstance(s, bytes) or not isinstance(h, bytes):
                raise SecAggError("malformed key advertisement (keys c, s and commitment h)")
            session.adverts[number] = AdvertiseKeys(number, c, s, h)
        elif step == "shares":
            session.shares[number] = ShareKeys(number, _bytes_map(msg.meta.get("ct"), "shares"))
        elif step == "masked":
            masked = msg.params.get(MASKED)
            if masked is None:
                raise SecAggError(f"no {MASKED!r} array")
            session.masked[number] = MaskedInput(number, np.asarray(masked),
                                                 _complaints(msg.meta.get("complaints", {})))
        elif step == "unmask":
            session.answers[number] = UnmaskResponse(
                number, _bytes_map(msg.meta.get("s"), "s shares"),
                _bytes_map(msg.meta.get("b"), "b shares"))

    def _session_for(self, rnd: int) -> _Session | None:
        current = self._session
        if current is not None and rnd < current.round:
            return None
        if current is None or rnd > current.round:
            if current is not None and current.timer is not None:
                current.timer.cancel()
            cfg = self.settings.config(len(self.numbers), self.vector_size, self.job_id, rnd)
            self._session = current = _Session(rnd, SecAggServer(cfg))
            self._arm(current)
        return current

    def _expected(self, session: _Session) -> set[int]:
        everyone = set(self.numbers.values()) - session.failed
        if session.step == "advertise":
            expected = everyone
        elif session.step == "shares":
            expected = set(session.server.roster)
        elif session.step == "masked":
            expected = set(session.server.u2)
        elif session.step == "unmask":
            assert session.server.request is not None
            expected = set(session.server.request.survivors)
        else:
            return set()
        return expected - session.excluded

    @staticmethod
    def _tables(session: _Session) -> dict[Any, Mapping[int, Any]]:
        """Each step's answers so far, by step name."""
        return {"advertise": session.adverts, "shares": session.shares,
                "masked": session.masked, "unmask": session.answers}

    def _received(self, session: _Session) -> set[int]:
        return set(self._tables(session).get(session.step, {}))

    def _arm(self, session: _Session) -> None:
        if session.timer is not None:
            session.timer.cancel()
        step = session.step
        session.timer = asyncio.get_running_loop().create_task(self._deadline(session, step))

    async def _deadline(self, session: _Session, step: str) -> None:
        await asyncio.sleep(self.settings.step_timeout)
        async with self._lock:
            if self._session is session and session.step == step:
                log.warning("secure sum round %d: step %s timed out with %d answers",
                            session.round, step, len(self._received(session)))
                session.timer = None
                await self._advance(session)

    async def _maybe_advance(self, session: _Session) -> None:
        if session.step != "done" and self._expected(session) <= self._received(session):
            await self._advance(session)

    async def _advance(self, session: _Session) -> None:
        """Close the current step with what arrived and start the next one."""
        srv, down = session.server, self._down(session.round)
        try:
            if session.step == "advertise":
                roster = srv.collect_keys(list(session.adverts.values()))
                session.step = "shares"
                await self.send("down", down("roster", {
                    "keys": {str(k): [c, s] for k, (c, s) in roster.keys.items()}}))
            elif session.step == "shares":
                routed = srv.route_shares(list(session.shares.values()))
                session.step = "masked"
                for number, delivered in routed.items():
                    await self.send("down", down("shares", {"ct": _str_keys(delivered)},
                                                 recipient=self.names[number]))
            elif session.step == "masked":
                request = srv.collect_masked(list(session.masked.values()))
                session.step = "unmask"
                await self.send("down", down("unmask", {
                    "survivors": list(request.survivors), "dropped": list(request.dropped)}))
            elif session.step == "unmask":
                session.step = "done"
                if session.timer is not None and session.timer is not asyncio.current_task():
                    session.timer.cancel()
                await self._finish(session)
                return
        except Exception as exc:  # a protocol verdict, or a library refusing the input
            await self._abort(session, _reason(exc))
            return
        self._name(session)
        self._arm(session)
        await self._maybe_advance(session)  # e.g. every client already failed

    async def _finish(self, session: _Session) -> None:
        srv = session.server
        began = time.perf_counter()
        try:
            total = await asyncio.to_thread(srv.finish, list(session.answers.values()))
        except Exception as exc:  # e.g. a share that is not a field element
            await self._abort(session, _reason(exc))
            return
        self._name(session)
        self.server_seconds[session.round] = time.perf_counter() - began
        assert srv.request is not None
        weight = float(total[-1])
        if not weight > 0:
            await self._abort(session, f"the summed weight is {weight}, not positive")
            return
        mean = unflatten(total[:-1] / weight, self.template)
        await self.send("out", Message.create(
            Kind.UPDATE, job_id=self.job_id, round=session.round, sender=self.name,
            params=mean, num_examples=max(1, round(weight)),
            meta={SUMMARY: self._summary(srv.request.survivors, srv.request.dropped, session)},
        ))

    async def _abort(self, session: _Session, reason: str) -> None:
        self._name(session)
        log.warning("secure sum round %d failed: %s", session.round, reason)
        session.step = "done"
        if session.timer is not None and session.timer is not asyncio.current_task():
            session.timer.cancel()
        await self.send("down", self._down(session.round)("abort", {"reason": reason}))
        members = [n for n in self.numbers.values() if n not in session.failed]
        await self.send("out", Message.create(
            Kind.ERROR, job_id=self.job_id, round=session.round, sender=self.name,
            error=f"secure sum failed: {reason}",
            meta={SUMMARY: self._summary((), members, session)},
        ))

    def _summary(self, survivors: Sequence[int], dropped: Sequence[int],
                 session: _Session) -> dict[str, Any]:
        """Who is in the sum, who is not, and who broke the protocol (name -> what it did)."""
        return {"survivors": [self.names[n] for n in survivors],
                "dropped": [self.names[n] for n in dropped],
                "misbehaved": {self.names[n]: why[:200] for n, why
                               in session.server.misbehaviour.items() if n in self.names}}

    def _down(self, rnd: int) -> Any:
        def make(step: str, meta: dict[str, Any], recipient: str | None = None) -> Message:
            return Message.create(Kind.CONTROL, job_id=self.job_id, round=rnd, sender=self.name,
                                  meta={STEP: step, **meta}, recipient=recipient)
        return make

    async def stop(self) -> None:
        if self._session is not None and self._session.timer is not None:
            self._session.timer.cancel()


class SecureSumStage(Stage):
    """The secure sum as a pipeline step (job files: ``type: secure-sum``).

    It has no client filter: the protocol needs its own pods and topic, which
    :class:`foedus.topology.secure_sum.SecureJob` (the job runner) and
    :func:`foedus.topology.secure_sum.run_secure_aggregation_job` build. Its server
    half refuses every update, so a runner that does not build those graphs (e.g. the
    simulator) fails closed instead of silently aggregating unmasked updates.

    ``threshold`` (the fewest clients whose inputs the sum needs) may replace
    ``settings.max_dropouts``; it is resolved against the client count by :meth:`for_clients`.
    """

    tag: ClassVar[str] = "secagg"
    privacy_operations: ClassVar[tuple[str, ...] | None] = ("mask",)  # foedus.core.filter.MASK

    def __init__(self, settings: SecureSumSettings, *, threshold: int | None = None) -> None:
        self.settings = settings
        self.threshold = threshold

    def server(self) -> Filter:
        return _NoSecureGraphs()

    def for_clients(self, num_clients: int) -> SecureSumSettings:
        """The settings for a job of ``num_clients`` participants, checked as a whole."""
        settings = self.settings
        if self.threshold is not None:
            if self.threshold > num_clients:
                raise ConfigError(f"threshold={self.threshold} is above the job's "
                                  f"{num_clients} clients (clients.count)")
            settings = replace(settings, max_dropouts=num_clients - self.threshold)
        elif settings.max_dropouts >= num_clients:
            raise ConfigError(f"max_dropouts={settings.max_dropouts} leaves no client of the "
                              f"job's {num_clients} to sum")
        elif num_clients - settings.max_dropouts <= num_clients // 2:
            # said in the key the job wrote; the check below words it as a threshold
            raise ConfigError(
                f"max_dropouts={settings.max_dropouts} of the job's {num_clients} clients "
                f"(clients.count) leaves {num_clients - settings.max_dropouts} to sum, not more "
                f"than half of them: max_dropouts may be at most "
                f"{num_clients - num_clients // 2 - 1}")
        settings.config(num_clients, 2, "check", 0)  # threshold > n/2, ring overflow, ...
        return settings


class _NoSecureGraphs(Filter):
    """The server half of :class:`SecureSumStage` in a runner without the secure graphs."""

    def __init__(self) -> None:
        super().__init__("secure_sum_missing")

    def process(self, msg: Message) -> Message | None:
        if msg.kind is not Kind.UPDATE:
            return msg
        raise ConfigError("secure-sum: this runner does not build the secure-sum graphs "
                          "(use foedus run / server / client); refusing an unmasked update")


@stages.register("secure-sum")
def secure_sum_stage(
    threshold: int | None = None, max_dropouts: int | None = None, value_range: float = 1.0e6,
    scale_bits: int = 20, ring_bits: int = 64, weighting: str = "examples",
    step_timeout: float = 30.0,
) -> SecureSumStage:
    """``type: secure-sum`` in a job file: exactly one of ``threshold`` (clients whose inputs
    the sum needs) or ``max_dropouts`` (clients it survives losing); the client count is checked
    when the job is built."""
    if (threshold is None) == (max_dropouts is None):
        raise ConfigError("give exactly one of threshold (clients the sum needs) or "
                          "max_dropouts (clients it may lose)")
    for name, value in (("threshold", threshold), ("max_dropouts", max_dropouts),
                        ("scale_bits", scale_bits), ("ring_bits", ring_bits)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{name} must be an integer, got {shown(value)}")
    for name, number in (("value_range", value_range), ("step_timeout", step_timeout)):
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise ConfigError(f"{name} must be a number, got {shown(number)}")
    if threshold is not None and threshold < 2:
        raise ConfigError(f"threshold must be at least 2, got {threshold}")
    settings = SecureSumSettings(
        max_dropouts=0 if max_dropouts is None else max_dropouts, value_range=float(value_range),
        scale_bits=scale_bits, ring_bits=ring_bits, weighting=weighting,
        step_timeout=float(step_timeout))
    SecAggConfig(3, 2, 1, value_range=settings.value_range, scale_bits=scale_bits,
                 ring_bits=ring_bits)  # ring_bits, scale_bits, value_range now; overflow per job
    return SecureSumStage(settings, threshold=threshold)


# ---- job files ----------------------------------------------------------------------------------
def masking_filters(stages_before: Sequence[Stage]) -> list[Filter]:
    """The client filters that run before masking, for the stages ahead of the secure sum.

    The server sees only the sum, so no server half can run there. A stage whose server half
    only *verifies* its client half (``clip``: the trail tag and the clip norm) has that check
    run on the client, right after its own filters; any other server half (central noise,
    decoders) needs individual updates and is refused.
    """
    from foedus.privacy.dp import ClipStage

    client: list[Filter] = []
    checks: list[Filter] = []
    for i, stage in enumerate(stages_before):
        check = stage.server()
        if check is not None and not isinstance(stage, ClipStage):
            raise ConfigError(
                f"pipeline[{i}] ({type(stage).__name__}) has a server half, which would only "
                "see the secure sum; it cannot run before secure-sum (clip can)")
        if (f := stage.client()) is not None:
            client.append(f)
        if check is not None:
            checks.append(check)
    filters = [*client, *reversed(checks)]
    seen: dict[str, int] = {}
    for f in filters:  # two clip stages would give two pods one name
        seen[f.name] = seen.get(f.name, 0) + 1
        if seen[f.name] > 1:
            f.name = f"{f.name}-{seen[f.name]}"
    return filters
