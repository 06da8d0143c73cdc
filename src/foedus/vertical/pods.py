"""The vertical parties as pods: one label party drives, feature parties answer.

Wires: the label party's ``request`` output carries messages addressed (``recipient``) to one
feature party; its ``reply`` input receives theirs. A feature party has the mirror pair
(``request`` in, ``reply`` out). The topology puts a transport between them; the pods never
know which.

One run, every step named in the message's ``meta["step"]`` and tied to the run by
``meta["run"]`` (a random id the label party draws, so leftovers of an earlier run are
refused)::

    F -> L  hello       until F has heard from L (L may start later, messages are not kept)
    L -> F  psi         L's ids, encrypted under L's PSI key            (foedus.vertical.psi)
    F -> L  psi         F's PSI setup and its answer to L's request
    L -> F  align       the salted digests of the common train and test ids (the row order),
                        the salt, L's Paillier public key
    F -> L  scores      round 0: X_k W_k of the train and test rows (W_k = 0)
    per round t = 1..T:
    L -> F  residuals   E(R), R = prediction - y of every train row       (Paillier, L's key)
    F -> L  gradient    E(X_k^T R) * E(M), a fresh uniform mask M mod n
    L -> F  unmasked    X_k^T R + M mod n (decrypted); L updates its own W_L and bias
    F -> L  scores      round t: X_k W_k after F's update; L scores the test rows: the round's
                        metrics
    L -> F  stop

What each party learns is in docs/vertical.md. Nothing a peer sends can crash a party: every
message is checked (sender, run, step, round, names, shapes, dtypes, value ranges) and anything
else is refused, counted under a reason in ``rejected`` and logged in one line.
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
from foedus.vertical.linear import Task, partial_scores
from foedus.vertical.paillier import FixedPoint, KeyPair, PublicKey, from_bytes, to_bytes, width
from foedus.vertical.psi import PsiQuerier, PsiResponder, order_of, rows_in_order

log = logging.getLogger("foedus.vertical")

#: seconds between a feature party's hellos while it waits for the label party
HELLO_INTERVAL = 0.5


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


def _array(msg: Message, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``msg.params[name]`` if it has exactly this dtype and shape, else :class:`ValueError`."""
    value = msg.params.get(name)
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype) \
            or value.shape != shape:
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else "nothing"
        raise ValueError(f"{name!r} must be {np.dtype(dtype)} {shape}, got {got}")
    return value


def _bytes(msg: Message, name: str, limit: int) -> bytes:
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


class LabelPartyPod(Pod):
    """The party with the labels: aligns the entities, drives the rounds, evaluates.

    ``train``/``test``: its ids, columns and labels of its train and held-out entities.
    ``parties``: the feature parties' names. ``key_bits``: the Paillier modulus (2048 for real
    data; 1024 is quick enough for demos and tests). ``fraction_bits``: the fixed point of every
    encrypted number. ``round_timeout``: how long it waits for a step's answers; a party that
    does not answer stops the job (its columns cannot be done without) with ``stop_reason``.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("reply"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("request"),)

    def __init__(
        self, *, job_id: str, party: str, parties: Sequence[str], task: Task,
        train: tuple[Sequence[str], np.ndarray, np.ndarray],
        test: tuple[Sequence[str], np.ndarray, np.ndarray], rounds: int,
        learning_rate: float, key_bits: int = 2048, fraction_bits: int = 32,
        round_timeout: float = 60.0, join_timeout: float | None = None,
    ) -> None:
        super().__init__(party)
        self.job_id, self.party, self.parties = job_id, party, list(parties)
        self.task, self.rounds, self.learning_rate = task, rounds, learning_rate
        self.key_bits, self.fraction_bits = key_bits, fraction_bits
        self.round_timeout, self.join_timeout = round_timeout, join_timeout
        self.train_ids, self.train_x, self.train_y = list(train[0]), train[1], train[2]
        self.test_ids, self.test_x, self.test_y = list(test[0]), test[1], test[2]
        d = self.train_x.shape[1]
        self.weights = np.zeros((d, task.outputs))
        self.bias = np.zeros(task.outputs)
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

    async def _collect(self, step: str, round_: int,
                       check: Callable[[Message], Any]) -> dict[str, Any] | None:
        """Every party's checked answer to ``step`` of ``round_``, or ``None`` (after setting
        ``stop_reason``) when one has not answered within ``round_timeout``."""
        got: dict[str, Any] = {}
        deadline = time.monotonic() + self.round_timeout
        while len(got) < len(self.parties):
            try:
                msg = await asyncio.wait_for(self._inbox.get(), deadline - time.monotonic())
            except TimeoutError:
                silent = sorted(set(self.parties) - set(got))
                self.stop_reason = (f"parties {silent} did not answer step {step!r} of round "
                                    f"{round_} within {self.round_timeout:g}s")
                return None
            if msg.meta.get("step") != step or msg.round != round_ or msg.sender in got:
                self.rejected("unexpected", msg, f"step {msg.meta.get('step')!r} of round "
                              f"{msg.round} while collecting {step!r} of round {round_}")
                continue
            if msg.error is not None:
                self.rejected("party_error", msg, msg.error)
                continue
            try:
                got[msg.sender] = check(msg)
            except Exception as exc:  # whatever a peer sends: refused, counted, never fatal
                self.rejected("malformed", msg, f"{type(exc).__name__}: {exc}")
        return got

    async def _send(self, to: str, step: str, round_: int = 0,
                    params: Mapping[str, np.ndarray] | None = None, **meta: Any) -> None:
        kind = Kind.CONTROL if step in ("psi", "align", "stop") else Kind.MODEL
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

    async def _stop_all(self) -> None:
        for party in self.parties:
            await self._send(party, "stop", reason=self.stop_reason or "finished")

    async def _protocol(self) -> None:
        try:
            await asyncio.wait_for(self._joined.wait(), self.join_timeout)
        except TimeoutError:
            self.stop_reason = (f"parties {sorted(set(self.parties) - self._hello)} did not "
                                f"join within {self.join_timeout:g}s")
            return
        scores = await self._align()
        if scores is None:
            return
        for t in range(1, self.rounds + 1):
            began = time.perf_counter()
            rejected_before = Counter(self.rejected.counts)
            scores = await self._round(t, scores)
            if scores is None:
                return
            z_test = self.test_x @ self.weights + self.bias + sum(
                (s[1] for s in scores.values()), np.zeros((len(self.test_ids), self.task.outputs)))
            result = RoundResult(t, self.task.metrics(z_test, self.test_y),
                                 time.perf_counter() - began,
                                 dict(self.rejected.counts - rejected_before))
            self.history.append(result)
            for listener in self.round_listeners:
                listener(result)

    async def _align(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """PSI with every party, then the order of the common rows and the public key."""
        mine = self.train_ids + self.test_ids
        queriers = {p: PsiQuerier(mine) for p in self.parties}
        for party, querier in queriers.items():
            await self._send(party, "psi", params={"request": _u8(querier.request())})
        limit = 64 * 1024 * 1024
        shared = await self._collect("psi", 0, lambda m: queriers[m.sender].shared(
            _bytes(m, "setup", limit), _bytes(m, "response", limit)))
        if shared is None:
            return None
        common = set(mine).intersection(*shared.values())
        salt = secrets.token_bytes(16)
        train_ids, train_order = order_of(salt, common & set(self.train_ids))
        test_ids, test_order = order_of(salt, common & set(self.test_ids))
        if not train_ids:
            self.stop_reason = "the parties hold no training entity in common"
            return None
        rows = {e: i for i, e in enumerate(self.train_ids)}
        keep = [rows[e] for e in train_ids]
        self.train_x, self.train_y = self.train_x[keep], self.train_y[keep]
        rows = {e: i for i, e in enumerate(self.test_ids)}
        keep = [rows[e] for e in test_ids]
        self.test_x, self.test_y = self.test_x[keep], self.test_y[keep]
        self.train_ids, self.test_ids = train_ids, test_ids
        self.common = (len(train_ids), len(test_ids))
        self.keys = await asyncio.to_thread(KeyPair, self.key_bits)
        self.fixed = FixedPoint(self.keys.public.n, self.fraction_bits)
        n = self.keys.public.n
        for party in self.parties:
            await self._send(party, "align", params={
                "train": train_order, "test": test_order, "salt": _u8(salt),
                "public_key": _u8(n.to_bytes(width(n), "big"))},
                fraction_bits=self.fraction_bits)
        return await self._collect("scores", 0, self._scores)

    def _scores(self, msg: Message) -> tuple[np.ndarray, np.ndarray]:
        k = self.task.outputs
        train = _array(msg, "train", np.float64, (len(self.train_ids), k))
        test = _array(msg, "test", np.float64, (len(self.test_ids), k))
        if not (np.isfinite(train).all() and np.isfinite(test).all()):
            raise ValueError("scores must be finite")
        return train, test

    async def _round(self, t: int, scores: dict[str, tuple[np.ndarray, np.ndarray]],
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        z = self.train_x @ self.weights + self.bias + sum(
            (s[0] for s in scores.values()), np.zeros((len(self.train_ids), self.task.outputs)))
        r = self.task.residuals(z, self.train_y)
        public = self.keys.public
        cipher = await asyncio.to_thread(
            lambda: to_bytes(public.encrypt(self.fixed.encode(r)), public.nsquare))
        for party in self.parties:
            await self._send(party, "residuals", t, {"residuals": cipher})
        m = len(self.train_ids)  # the label party's own step, in the clear: it has R
        self.weights = self.weights - self.learning_rate * (self.train_x.T @ r) / m
        self.bias = self.bias - self.learning_rate * r.mean(axis=0)

        def masked(msg: Message) -> np.ndarray:
            rows = msg.params.get("gradient")
            count = rows.shape[0] if isinstance(rows, np.ndarray) and rows.ndim == 2 else -1
            if count <= 0 or count % self.task.outputs:
                raise ValueError("'gradient' must be (d * outputs, width) uint8")
            values = from_bytes(rows, public.nsquare, count)  # type: ignore[arg-type]
            return to_bytes(self.keys.decrypt(values), public.n)

        gradients = await self._collect("gradient", t, masked)
        if gradients is None:
            return None
        for party, plain in gradients.items():
            await self._send(party, "unmasked", t, {"gradient": plain})
        return await self._collect("scores", t, self._scores)


class FeaturePartyPod(Pod):
    """A party with columns and no labels: answers the label party, keeps its own weights.

    ``ids``/``x``: its entities and its columns of them (train and held-out alike: only the
    label party knows which is which, and tells it the order of each). ``idle_timeout``: once
    it has joined a run, how long it waits for the label party's next message before it ends
    (``stop_reason`` says so).
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("request"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("reply"),)
    blocking = True  # PSI and the encrypted gradient are CPU work: a worker thread

    def __init__(self, *, job_id: str, party: str, label_party: str, task: Task,
                 ids: Sequence[str], x: np.ndarray, learning_rate: float,
                 idle_timeout: float = 120.0, max_ids: int = 10_000_000,
                 keep_received: bool = False) -> None:
        super().__init__(party)
        self.job_id, self.party, self.label_party = job_id, party, label_party
        self.task, self.ids, self.x = task, list(ids), np.asarray(x, np.float64)
        self.learning_rate, self.idle_timeout, self.max_ids = learning_rate, idle_timeout, max_ids
        self.rejected = Rejections(party)
        self.stop_reason: str | None = None
        #: with ``keep_received``, every message that reached this party (for audits)
        self.received: list[Message] = []
        self.keep_received = keep_received
        self.run_id: str | None = None
        self.weights = np.zeros((self.x.shape[1], task.outputs))
        self.round = 0
        self._heard = time.monotonic()
        self._joined = asyncio.Event()
        self._finished = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[int] | None = None  # this round's masks
        self._train = self._test = np.zeros(0, np.int64)
        self._key: PublicKey | None = None
        self._fixed: FixedPoint | None = None
        self._xint = np.zeros((0, 0), np.int64)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._joined.is_set():
            await self.send("reply", self._message(Kind.CONTROL, "hello", 0, {}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._joined.wait(), HELLO_INTERVAL)
        while not self._finished.is_set():
            try:
                await asyncio.wait_for(self._finished.wait(), self.idle_timeout)
            except TimeoutError:
                if time.monotonic() - self._heard >= self.idle_timeout:
                    self.stop_reason = (f"no message from {self.label_party!r} for "
                                        f"{self.idle_timeout:g}s")
                    return

    def _message(self, kind: Kind, step: str, round_: int,
                 params: Mapping[str, np.ndarray]) -> Message:
        return Message.create(kind, job_id=self.job_id, round=round_, sender=self.party,
                              recipient=self.label_party, params=dict(params),
                              meta={"step": step, "run": self.run_id or ""})

    def _set(self, event: asyncio.Event) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(event.set)

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
        handler = {"psi": self._psi, "align": self._align, "residuals": self._residuals,
                   "unmasked": self._unmasked, "stop": self._stop}.get(str(step))
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
            _bytes(msg, "request", 64 * 1024 * 1024))
        self.run_id, self.round, self._pending, self._key = run, 0, None, None  # a new run
        self.weights = np.zeros_like(self.weights)
        self._set(self._joined)
        self.emit("reply", self._message(Kind.UPDATE, "psi", 0,
                                         {"setup": _u8(setup), "response": _u8(response)}))

    def _align(self, msg: Message) -> None:
        if self._key is not None:
            raise ValueError("this run is aligned already")
        salt = _bytes(msg, "salt", 64)
        train = rows_in_order(salt, msg.params.get("train", np.zeros(0)), self.ids)
        test = rows_in_order(salt, msg.params.get("test", np.zeros(0)), self.ids)
        if not len(train) or set(train.tolist()) & set(test.tolist()):
            raise ValueError("an empty training order, or a row both in training and test")
        key = _bytes(msg, "public_key", 4096)
        bits = msg.meta.get("fraction_bits")
        if not isinstance(bits, int) or not 8 <= bits <= 40:
            raise ValueError(f"fraction_bits must be an integer in [8, 40], got {bits!r}")
        scaled = np.rint(self.x[train] * 2.0 ** bits)
        if not np.all(np.abs(scaled) < 2.0 ** 62):
            raise ValueError(f"this party's values do not fit {bits} fraction bits")
        self._key = PublicKey(int.from_bytes(key, "big"))
        self._fixed = FixedPoint(self._key.n, bits)
        self._train, self._test = train, test
        self._xint = scaled.astype(np.int64)
        self.emit("reply", self._scores(0))

    def _scores(self, round_: int) -> Message:
        return self._message(Kind.UPDATE, "scores", round_, {
            "train": partial_scores(self.x[self._train], self.weights),
            "test": partial_scores(self.x[self._test], self.weights)})

    def _residuals(self, msg: Message) -> None:
        if self._key is None or msg.round != self.round + 1 or self._pending is not None:
            raise ValueError(f"residuals of round {msg.round} while at round {self.round}")
        key, k = self._key, self.task.outputs
        rows = msg.params.get("residuals")
        if not isinstance(rows, np.ndarray):
            raise ValueError("no 'residuals'")
        cipher = from_bytes(rows, key.nsquare, len(self._train) * k)
        gradient = key.dot(cipher, k, self._xint)
        masks = key.random_mask(len(gradient))
        # E(M) with fresh randomness: the sum is a fresh ciphertext, so even the key holder
        # learns nothing of X_k from how it was computed, only the masked value
        masked = key.add(gradient, key.encrypt(masks))
        self._pending = masks
        self.emit("reply", self._message(Kind.UPDATE, "gradient", msg.round,
                                         {"gradient": to_bytes(masked, key.nsquare)}))

    def _unmasked(self, msg: Message) -> None:
        if self._key is None or self._fixed is None or self._pending is None \
                or msg.round != self.round + 1:
            raise ValueError(f"a gradient of round {msg.round} nobody asked for")
        rows = msg.params.get("gradient")
        if not isinstance(rows, np.ndarray):
            raise ValueError("no 'gradient'")
        n = self._key.n
        plain = from_bytes(rows, n, len(self._pending))
        values = [(v - m) % n for v, m in zip(plain, self._pending, strict=True)]
        gradient = self._fixed.decode(values, 2 * self._fixed.bits).reshape(self.weights.shape)
        self.weights = self.weights - self.learning_rate * gradient / len(self._train)
        self.round, self._pending = msg.round, None
        self.emit("reply", self._scores(msg.round))

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


def label_graph(pod: LabelPartyPod, transport: Transport, topics: Topics) -> Graph:
    """The label party's graph: replies in, requests out to each recipient's own topic."""
    replies = Downlink(transport, topics.label, job_id=pod.job_id, name="replies_in")
    requests = Uplink(transport, lambda m: topics.party(m.header.recipient or ""),
                      name="requests_out")
    graph = Graph(f"{pod.job_id}/vertical/{pod.party}").add(replies, pod, requests)
    graph.connect("replies_in.out", f"{pod.name}.reply")
    graph.connect(f"{pod.name}.request", "requests_out.in")
    return graph


def feature_graph(pod: FeaturePartyPod, transport: Transport, topics: Topics) -> Graph:
    """A feature party's graph: its own topic in, replies out to the label party's."""
    requests = Downlink(transport, topics.party(pod.party), job_id=pod.job_id,
                        name="requests_in")
    replies = Uplink(transport, topics.label, name="replies_out")
    graph = Graph(f"{pod.job_id}/vertical/{pod.party}").add(requests, pod, replies)
    graph.connect("requests_in.out", f"{pod.name}.request")
    graph.connect(f"{pod.name}.reply", "replies_out.in")
    return graph
