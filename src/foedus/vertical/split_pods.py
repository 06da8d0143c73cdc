"""Split learning as pods: the label party holds the top model and the labels, each feature
party its bottom model; embeddings go forward and gradients back, one batch per exchange.

After the shared start (:mod:`foedus.vertical.parties`: hello, PSI, ``align`` with the order
of the common rows)::

    F -> L  ready       round 0, nothing else
    per epoch t, per batch (seq = 1, 2, ... over the whole run):
    L -> F  step        rows of the batch (positions in the aligned training order, or in the
                        held-out order for the epoch's evaluation, part = test) and, from the
                        second batch on, the gradient of the loss with respect to F's
                        embeddings of the previous training batch (F's slice with concat, the
                        gradient of the sum with sum)
    F -> L  embedding   F first updates its bottom model with that gradient, then sends its
                        embeddings of the rows (clipped and noised with the split-noise stage)
    L -> F  stop

With ``secure_sum`` (``combine: sum``, two feature parties or more) the ``embedding`` answer
is replaced by one secure-sum session per batch (:mod:`foedus.privacy.secagg`, the label party
as its server, every feature party a client, no dropout tolerated: a silent party stops the
job anyway)::

    F -> L  advertise   the session's public keys
    L -> F  roster      everyone's public keys
    F -> L  shares      its Shamir shares, encrypted to each other party
    L -> F  routed      the shares addressed to F
    F -> L  masked      its embeddings, masked
    L -> F  unmask      who survived (everyone)
    F -> L  unmasked    its shares of the others' self-mask seeds

so the label party learns the sum of the feature parties' embeddings, never one of them.

A feature party with a ``checkpoint`` path saves its state (bottom model, optimizer, noise
generator, position, last answer) after every step, and resumes from it when it restarts;
the label party asks again (``step``'s answer missing for a sixth of ``round_timeout``), and a
party answers a question it has already answered with the same answer. Over Kafka its
requests topic is read with a durable group, so what was sent while it was down waits for it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foedus.core.errors import require
from foedus.core.message import Kind, Message
from foedus.privacy.secagg import (
    AdvertiseKeys,
    MaskedInput,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from foedus.privacy.secagg_pods import numbering
from foedus.vertical.linear import Task
from foedus.vertical.parties import FeatureSide, LabelSide, RoundResult, array, as_bytes, u8
from foedus.vertical.split import (
    SplitSpec,
    batches,
    bottom_model,
    combine,
    embed,
    loss,
    optimizer,
    seed_of,
    state_of,
    top_model,
)
from foedus.vertical.split_noise import SplitNoiseStage

#: X25519 public keys and the bytes of one encrypted pair of Shamir shares are this small
KEY_BYTES = 32
SHARE_LIMIT = 4096


def secure_config(job_id: str, run: str, seq: int, parties: int, size: int) -> SecAggConfig:
    """One batch's secure-sum session: every feature party must answer (threshold = all),
    embeddings up to 1e6 in magnitude at 2**-24 precision in a 64-bit ring."""
    return SecAggConfig(parties, parties, size, value_range=1.0e6, scale_bits=24, ring_bits=64,
                        session=f"foedus-split/{job_id}/{run}/{seq}".encode())


def _rng(seed: int | None, party: str) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else seed_of(seed, "noise/" + party))


class SplitLabelPod(LabelSide):
    """The label party: its own bottom model, the top model and the labels; drives the
    batches and evaluates every epoch on its held-out people.

    ``columns``: how many columns each party has, in concatenation order (this party first).
    ``spec``, ``seed``: the network every party builds. ``noise``: the job's split-noise stage,
    if any. ``secure_sum``: sum the feature parties' embeddings by secure sum.
    """

    control_steps = ("psi", "align", "stop", "roster", "routed", "unmask")

    def __init__(
        self, *, job_id: str, party: str, parties: Sequence[str], task: Task,
        train: tuple[Sequence[str], np.ndarray, np.ndarray],
        test: tuple[Sequence[str], np.ndarray, np.ndarray], rounds: int, spec: SplitSpec,
        seed: int, noise: SplitNoiseStage | None = None, secure_sum: bool = False,
        checkpoint: Path | None = None, round_timeout: float = 60.0,
        join_timeout: float | None = None,
    ) -> None:
        super().__init__(job_id=job_id, party=party, parties=parties, task=task, train=train,
                         test=test, rounds=rounds, round_timeout=round_timeout,
                         join_timeout=join_timeout)
        self.spec, self.seed, self.noise, self.secure_sum = spec, seed, noise, secure_sum
        self.bottom = bottom_model(self.train_x.shape[1], spec, seed, party)
        self.top = top_model(1 + len(self.parties), task, spec, seed)
        self._optimizers = [optimizer(self.top, spec), optimizer(self.bottom, spec)]
        self._rng = _rng(seed, party)
        self._seq = 0
        self._asked: dict[str, Message] = {}  # the question each party has not answered yet
        self.checkpoint = checkpoint
        #: where training stands: (epoch, training batches done in it); None before alignment
        self._position: tuple[int, int] | None = None
        self._gradients: dict[str, np.ndarray] = {}  # owed to each party with the next batch
        self._joined_before = False
        self.resumed = checkpoint is not None and checkpoint.exists() and self._restore()

    def params(self) -> dict[str, np.ndarray]:
        """This party's modules: ``top/...`` and ``bottom/<party>/...``."""
        return state_of(self.top, "top") | state_of(self.bottom, f"bottom/{self.party}")

    # ---- the driver ----------------------------------------------------------------------
    async def _protocol(self) -> None:
        if self._position is None:
            if not await self._begin():
                return
        else:  # resumed: the rounds before the checkpoint, as they were
            for result in self.history:
                for listener in self.round_listeners:
                    listener(result)
        assert self._position is not None
        t, done = self._position
        gradients = self._gradients
        # batches are drawn over the people sorted by id, not in the salted order (a fresh
        # salt every run): the same job trains on the same batches every time it runs
        canonical = np.argsort(np.asarray(self.train_ids))
        while t <= self.rounds:
            began = time.perf_counter()
            rejected_before = Counter(self.rejected.counts)
            for b, batch in enumerate(batches(len(self.train_ids), self.spec.batch_size,
                                              self.seed, t)):
                if b < done:  # trained before the restart
                    continue
                rows = canonical[batch]
                received = await self._embeddings(t, "train", rows, gradients)
                if received is None:
                    return
                gradients = self._train_step(rows, received)
                self._save((t, b + 1), gradients)
            received = await self._embeddings(t, "test", np.arange(len(self.test_ids)),
                                              gradients)
            if received is None:
                return
            gradients = {}
            metrics = self._evaluate(received)
            if self.noise is not None:
                metrics |= self.noise.metrics(t)
            t, done = t + 1, 0
            self.history.append(RoundResult(t - 1, metrics, time.perf_counter() - began,
                                            dict(self.rejected.counts - rejected_before)))
            self._save((t, 0), {})  # before anyone hears of the round: it is never redone
            for listener in self.round_listeners:
                listener(self.history[-1])

    async def _begin(self) -> bool:
        """Join (unless a checkpoint says the parties joined already), align, and wait for
        every party to be ready; ``False`` (with ``stop_reason``) when the job cannot go on."""
        if not self._joined_before:
            if not await self._join():
                return False
            self._save(None, {})  # a restart from here on must not wait for hellos again
        aligned = await self._intersect()
        if aligned is None:
            return False
        salt, train_order, test_order = aligned
        for party in self.parties:
            await self._send(party, "align", params={
                "train": train_order, "test": test_order, "salt": u8(salt)})
        if await self._collect("ready", 0, lambda m: None) is None:
            return False
        self._save((1, 0), {})
        return True

    def _expected(self, msg: Message, step: str, round_: int) -> bool:
        return super()._expected(msg, step, round_) and msg.meta.get("seq", 0) == self._seq

    async def _ask(self, party: str, step: str, round_: int,
                   params: Mapping[str, np.ndarray], **meta: Any) -> None:
        """Send a question, and remember it until it is answered (to ask again)."""
        kind = Kind.CONTROL if step in self.control_steps else Kind.MODEL
        msg = Message.create(kind, job_id=self.job_id, round=round_, sender=self.party,
                             recipient=party, params=dict(params),
                             meta={"step": step, "run": self.run_id, "seq": self._seq, **meta})
        self._asked[party] = msg
        await self.send("request", msg)

    async def _ask_again(self, silent: list[str]) -> None:
        for party in silent:
            if party in self._asked:
                await self.send("request", self._asked[party])

    async def _answers(self, step: str, round_: int,
                       check: Callable[[Message], Any]) -> dict[str, Any] | None:
        return await self._collect(step, round_, check, on_silence=self._ask_again)

    async def _embeddings(self, t: int, part: str, rows: np.ndarray,
                          gradients: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
        """Ask every feature party for its embeddings of ``rows`` (sending it its gradient of
        the previous batch): one array per party in concatenation order, or with secure sum
        one array, their sum."""
        self._seq += 1
        for party in self.parties:
            params = {"rows": np.asarray(rows, np.int64)}
            if party in gradients:
                params["gradient"] = gradients[party]
            await self._ask(party, "step", t, params, part=part)
        shape = (len(rows), self.spec.embedding)
        if self.secure_sum:
            total = await self._secure_sum(t, shape)
            return None if total is None else [total]

        def check(msg: Message) -> np.ndarray:
            e = array(msg, "embedding", np.float32, shape)
            if not np.isfinite(e).all():
                raise ValueError("embeddings must be finite")
            return e

        got = await self._answers("embedding", t, check)
        return None if got is None else [got[p] for p in self.parties]

    def _train_step(self, rows: np.ndarray, received: list[np.ndarray],
                    ) -> dict[str, np.ndarray]:
        """Forward and backward through the top model and this party's bottom model; the
        gradients each feature party gets, noised when the stage says so."""
        torch = require("torch", "torch")
        for o in self._optimizers:
            o.zero_grad()
        leaves = [torch.tensor(np.array(e), requires_grad=True) for e in received]
        own = embed(self.bottom, self.train_x[rows], self.noise.clip if self.noise else None)
        scores = self.top(combine([own, *leaves], self.spec.combine))
        loss(self.task, scores, self.train_y[rows]).backward()
        for o in self._optimizers:
            o.step()
        grads = [leaf.grad.numpy() for leaf in leaves]
        if self.secure_sum:  # every party's embedding entered the same sum: one gradient
            g = self._noised(grads[0], len(rows))
            return dict.fromkeys(self.parties, g)
        joint = self._noised(np.concatenate(grads, axis=1), len(rows))
        width = self.spec.embedding
        return {p: np.ascontiguousarray(joint[:, i * width:(i + 1) * width])
                for i, p in enumerate(self.parties)}

    def _noised(self, g: np.ndarray, batch: int) -> np.ndarray:
        if self.noise is None:
            return np.asarray(g, np.float32)
        return self.noise.noise_gradients(g, batch, self._rng)

    def _evaluate(self, received: list[np.ndarray]) -> dict[str, float]:
        torch = require("torch", "torch")
        with torch.no_grad():
            own = embed(self.bottom, self.test_x, self.noise.clip if self.noise else None)
            leaves = [torch.tensor(np.array(e)) for e in received]
            scores = self.top(combine([own, *leaves], self.spec.combine)).double().numpy()
        return self.task.metrics(scores, self.test_y)

    # ---- secure sum of the feature parties' embeddings -----------------------------------
    async def _secure_sum(self, t: int, shape: tuple[int, int]) -> np.ndarray | None:
        """One session with the label party as the server; ``None`` (with ``stop_reason``)
        when a party does not answer or the sum cannot be completed."""
        number = numbering(self.parties)
        cfg = secure_config(self.job_id, self.run_id, self._seq, len(self.parties),
                            shape[0] * shape[1])
        server = SecAggServer(cfg)

        def advert(m: Message) -> AdvertiseKeys:
            return AdvertiseKeys(number[m.sender], as_bytes(m, "c_public", KEY_BYTES),
                                 as_bytes(m, "s_public", KEY_BYTES))

        adverts = await self._answers("advertise", t, advert)
        if adverts is None:
            return None
        try:
            roster = server.collect_keys(list(adverts.values()))
            numbers = sorted(roster.keys)
            keys = np.asarray([[np.frombuffer(k, np.uint8) for k in roster.keys[n]]
                               for n in numbers], np.uint8)
            for party in self.parties:
                await self._ask(party, "roster", t, {"numbers": np.asarray(numbers, np.int64),
                                                     "keys": keys})

            def shares(m: Message) -> ShareKeys:
                return ShareKeys(number[m.sender], {
                    int(k[3:]): as_bytes(m, k, SHARE_LIMIT) for k in m.params
                    if k.startswith("to.") and k[3:].isdigit()})

            sent = await self._answers("shares", t, shares)
            if sent is None:
                return None
            routed = server.route_shares(list(sent.values()))
            for party in self.parties:
                await self._ask(party, "routed", t, {
                    f"from.{u}": u8(c) for u, c in routed[number[party]].items()})

            def masked(m: Message) -> MaskedInput:
                return MaskedInput(number[m.sender],
                                   array(m, "masked", np.uint64, (cfg.vector_size,)))

            inputs = await self._answers("masked", t, masked)
            if inputs is None:
                return None
            request = server.collect_masked(list(inputs.values()))
            for party in self.parties:
                await self._ask(party, "unmask", t, {
                    "survivors": np.asarray(request.survivors, np.int64),
                    "dropped": np.asarray(request.dropped, np.int64)})

            def unmasked(m: Message) -> UnmaskResponse:
                def table(prefix: str) -> dict[int, bytes]:
                    return {int(k[2:]): as_bytes(m, k, SHARE_LIMIT) for k in m.params
                            if k.startswith(prefix) and k[2:].isdigit()}
                return UnmaskResponse(number[m.sender], s_shares=table("s."),
                                      b_shares=table("b."))

            answers = await self._answers("unmasked", t, unmasked)
            if answers is None:
                return None
            total = server.finish(list(answers.values()))
        except Exception as exc:  # SecAggError, a party that broke the protocol
            self.stop_reason = f"the secure sum of batch {self._seq} failed: {exc}"
            return None
        return total.reshape(shape).astype(np.float32)


    # ---- checkpoint -------------------------------------------------------------------------
    def _save(self, position: tuple[int, int] | None, gradients: Mapping[str, np.ndarray],
              ) -> None:
        """Everything this party needs to go on after a restart, written atomically: with
        ``position`` None, only that every party has joined (a restart redoes the PSI in a
        new run); else the aligned rows, both models, their optimizers, the noise
        generator, the batch counter, the gradients owed and the rounds so far."""
        self._position, self._gradients = position, dict(gradients)
        if self.checkpoint is None:
            return
        torch = require("torch", "torch")
        state: dict[str, Any] = {"job_id": self.job_id, "joined": True, "position": None}
        if position is not None:
            state |= {
                "position": list(position), "run_id": self.run_id, "seq": self._seq,
                "common": list(self.common),
                "train_ids": list(self.train_ids), "test_ids": list(self.test_ids),
                "data": {k: torch.as_tensor(np.asarray(v)) for k, v in (
                    ("train_x", self.train_x), ("train_y", self.train_y),
                    ("test_x", self.test_x), ("test_y", self.test_y))},
                "top": self.top.state_dict(), "bottom": self.bottom.state_dict(),
                "optimizers": [o.state_dict() for o in self._optimizers],
                "rng": repr(self._rng.bit_generator.state),
                "gradients": {p: torch.as_tensor(np.array(g)) for p, g in gradients.items()},
                "history": [{"round": r.round,
                             "metrics": {k: float(v) for k, v in r.metrics.items()},
                             "duration_s": r.duration_s, "rejected": dict(r.rejected)}
                            for r in self.history],
            }
        _save_atomically(self.checkpoint, state)

    def _restore(self) -> bool:
        """Load the checkpoint of this job, if it is one (another job's file is ignored)."""
        import ast

        assert self.checkpoint is not None
        state = _load_for_job(self.checkpoint, self.job_id)
        if state is None:
            return False
        self._joined_before = bool(state.get("joined"))
        if state["position"] is None:
            return True
        epoch, done = state["position"]
        self._position = (int(epoch), int(done))
        self.run_id, self._seq = state["run_id"], int(state["seq"])
        self.common = (int(state["common"][0]), int(state["common"][1]))
        self.train_ids, self.test_ids = list(state["train_ids"]), list(state["test_ids"])
        data = {k: v.numpy() for k, v in state["data"].items()}
        self.train_x, self.train_y = data["train_x"], data["train_y"]
        self.test_x, self.test_y = data["test_x"], data["test_y"]
        self.top.load_state_dict(state["top"])
        self.bottom.load_state_dict(state["bottom"])
        for o, saved in zip(self._optimizers, state["optimizers"], strict=True):
            o.load_state_dict(saved)
        self._rng.bit_generator.state = ast.literal_eval(state["rng"])
        self._gradients = {p: g.numpy() for p, g in state["gradients"].items()}
        self.history = [RoundResult(int(r["round"]), dict(r["metrics"]),
                                    float(r["duration_s"]), dict(r["rejected"]))
                        for r in state["history"]]
        self._joined.set()
        return True


class SplitFeaturePod(FeatureSide):
    """A feature party: its bottom model on its columns; answers with embeddings, learns from
    the gradients it gets back.

    ``parties``: every feature party's name (secure sum numbers them). ``checkpoint``: where
    it keeps its state after every step (and resumes from on restart), or ``None``.
    """

    def __init__(self, *, job_id: str, party: str, label_party: str, task: Task,
                 ids: Sequence[str], x: np.ndarray, spec: SplitSpec, seed: int,
                 parties: Sequence[str], noise: SplitNoiseStage | None = None,
                 secure_sum: bool = False, checkpoint: Path | None = None,
                 idle_timeout: float = 120.0, max_ids: int = 10_000_000,
                 keep_received: bool = False, join_timeout: float | None = None) -> None:
        super().__init__(job_id=job_id, party=party, label_party=label_party, task=task,
                         ids=ids, x=x, idle_timeout=idle_timeout, max_ids=max_ids,
                         keep_received=keep_received, join_timeout=join_timeout)
        self.spec, self.seed, self.noise, self.secure_sum = spec, seed, noise, secure_sum
        self.parties, self.checkpoint = list(parties), checkpoint
        self._new_run()
        self.resumed = checkpoint is not None and checkpoint.exists() and self._restore()

    def _new_run(self) -> None:
        self.bottom = bottom_model(self.x.shape[1], self.spec, self.seed, self.party)
        self._optimizer = optimizer(self.bottom, self.spec)
        self._rng = _rng(self.seed, self.party)
        self.seq = 0
        self._rows: dict[str, np.ndarray] | None = None
        self._last = np.zeros(0, np.int64)  # the previous training batch
        self._answer: Message | None = None  # the last answer (to a question asked again)
        self._session: SecAggClient | None = None
        self._vector = np.zeros(0)

    def params(self) -> dict[str, np.ndarray]:
        return state_of(self.bottom, f"bottom/{self.party}")

    def _steps(self) -> dict[str, Callable[[Message], None]]:
        steps = super()._steps() | {"align": self._align, "step": self._step}
        if self.secure_sum:
            steps |= {"roster": self._roster, "routed": self._routed, "unmask": self._unmask}
        return steps

    def _reply(self, step: str, round_: int, params: Mapping[str, np.ndarray]) -> None:
        self._answer = self._message(Kind.UPDATE, step, round_, params, seq=self.seq)
        self._save()
        self.emit("reply", self._answer)

    def _align(self, msg: Message) -> None:
        if self._rows is not None:
            raise ValueError("this run is aligned already")
        _, train, test = self._order(msg)
        self._rows = {"train": train, "test": test}
        self._reply("ready", 0, {})

    def _again(self, msg: Message, step: str) -> bool:
        """Whether ``msg`` asks again what this party last answered (then it answers again:
        the label party may not have heard it, e.g. across a restart)."""
        answer = self._answer
        if answer is None or msg.meta.get("seq") != self.seq or answer.meta.get("step") != step:
            return False
        self.emit("reply", answer)
        return True

    def _step(self, msg: Message) -> None:
        first = "advertise" if self.secure_sum else "embedding"
        if self._rows is None or self._again(msg, first):
            if self._rows is None:
                raise ValueError("a batch before the order")
            return
        seq, part = msg.meta.get("seq"), msg.meta.get("part")
        if seq != self.seq + 1 or part not in ("train", "test"):
            raise ValueError(f"batch {seq!r} ({part!r}) while at batch {self.seq}")
        rows = msg.params.get("rows")
        if not isinstance(rows, np.ndarray) or rows.dtype != np.int64 or rows.ndim != 1 \
                or not rows.size or rows.min() < 0 or rows.max() >= len(self._rows[part]):
            raise ValueError(f"'rows' must be int64 positions in the {part} order")
        clip = self.noise.clip if self.noise else None
        x = self.x[self._rows["train"]]
        if "gradient" in msg.params:
            g = array(msg, "gradient", np.float32, (len(self._last), self.spec.embedding))
            if not np.isfinite(g).all():
                raise ValueError("the gradient must be finite")
            torch = require("torch", "torch")
            self._optimizer.zero_grad()
            embed(self.bottom, x[self._last], clip).backward(torch.tensor(np.array(g)))
            self._optimizer.step()
        torch = require("torch", "torch")
        with torch.no_grad():
            e = embed(self.bottom, self.x[self._rows[part]][rows], clip).numpy()
        if self.noise is not None:
            e = self.noise.noise_embeddings(e, self._rng)
        self.seq = seq
        if part == "train":
            self._last = rows.copy()
        if not self.secure_sum:
            self._reply("embedding", msg.round, {"embedding": np.asarray(e, np.float32)})
            return
        cfg = secure_config(self.job_id, self.run_id or "", seq, len(self.parties), e.size)
        self._session = SecAggClient(cfg, numbering(self.parties)[self.party])
        self._vector = np.asarray(e, np.float64).ravel()
        advert = self._session.advertise()
        self._reply("advertise", msg.round, {"c_public": u8(advert.c_public),
                                             "s_public": u8(advert.s_public)})

    def _in_session(self, msg: Message, answer: str) -> SecAggClient | None:
        if self._again(msg, answer):
            return None
        if self._session is None or msg.meta.get("seq") != self.seq:
            raise ValueError(f"a secure-sum step of batch {msg.meta.get('seq')!r} while at "
                             f"batch {self.seq}")
        return self._session

    def _roster(self, msg: Message) -> None:
        session = self._in_session(msg, "shares")
        if session is None:
            return
        numbers = msg.params.get("numbers")
        if not isinstance(numbers, np.ndarray) or numbers.dtype != np.int64 or numbers.ndim != 1:
            raise ValueError("'numbers' must be int64")
        keys = array(msg, "keys", np.uint8, (len(numbers), 2, KEY_BYTES))
        roster = Roster({int(n): (k[0].tobytes(), k[1].tobytes())
                         for n, k in zip(numbers, keys, strict=True)})
        shares = session.share_keys(roster)
        self._reply("shares", msg.round, {f"to.{v}": u8(c) for v, c in shares.ciphertexts.items()})

    def _routed(self, msg: Message) -> None:
        session = self._in_session(msg, "masked")
        if session is None:
            return
        delivered = {int(k[5:]): as_bytes(msg, k, SHARE_LIMIT) for k in msg.params
                     if k.startswith("from.") and k[5:].isdigit()}
        masked = session.masked_input(self._vector, delivered)
        self._reply("masked", msg.round, {"masked": masked.masked})

    def _unmask(self, msg: Message) -> None:
        session = self._in_session(msg, "unmasked")
        if session is None:
            return
        survivors = msg.params.get("survivors")
        dropped = msg.params.get("dropped")
        if not all(isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 1
                   for a in (survivors, dropped)):
            raise ValueError("'survivors' and 'dropped' must be int64")
        assert survivors is not None and dropped is not None
        answer = session.unmask(UnmaskRequest(tuple(int(u) for u in survivors),
                                              tuple(int(u) for u in dropped)))
        self._session = None
        self._reply("unmasked", msg.round,
                    {f"s.{u}": u8(s) for u, s in answer.s_shares.items()}
                    | {f"b.{u}": u8(b) for u, b in answer.b_shares.items()})

    # ---- checkpoint -------------------------------------------------------------------------
    async def _resumed(self) -> None:
        if self.resumed:
            self._set(self._joined)

    def _save(self) -> None:
        """Everything this party needs to go on after a restart, written atomically."""
        if self.checkpoint is None or self._rows is None:
            return
        torch = require("torch", "torch")
        answer = self._answer
        state = {
            "job_id": self.job_id, "run_id": self.run_id, "seq": self.seq,
            "train": torch.as_tensor(self._rows["train"]),
            "test": torch.as_tensor(self._rows["test"]),
            "last": torch.as_tensor(self._last), "bottom": self.bottom.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "rng": repr(self._rng.bit_generator.state),
            "answer": None if answer is None else {
                "step": answer.meta["step"], "round": answer.round,
                "params": {k: torch.as_tensor(np.array(v)) for k, v in answer.params.items()}},
        }
        _save_atomically(self.checkpoint, state)

    def _restore(self) -> bool:
        """Load the checkpoint of this job, if it is one (a stale file is ignored)."""
        import ast

        assert self.checkpoint is not None
        state = _load_for_job(self.checkpoint, self.job_id)
        if state is None:
            return False
        self.run_id, self.seq = state["run_id"], int(state["seq"])
        self._rows = {"train": state["train"].numpy(), "test": state["test"].numpy()}
        self._last = state["last"].numpy()
        self.bottom.load_state_dict(state["bottom"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._rng.bit_generator.state = ast.literal_eval(state["rng"])
        answer = state["answer"]
        if answer is not None:
            self._answer = self._message(
                Kind.UPDATE, answer["step"], answer["round"],
                {k: v.numpy() for k, v in answer["params"].items()}, seq=self.seq)
        return True


def _save_atomically(path: Path, state: dict[str, Any]) -> None:
    """Write a party's checkpoint so that a kill mid-write leaves the previous one whole."""
    torch = require("torch", "torch")
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_for_job(path: Path, job_id: str) -> dict[str, Any] | None:
    """A party's checkpoint, or None when the file is another job's (a stale one)."""
    torch = require("torch", "torch")
    state: dict[str, Any] = torch.load(path, weights_only=True)
    return state if state.get("job_id") == job_id else None
