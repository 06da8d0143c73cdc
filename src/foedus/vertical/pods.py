"""The linear vertical protocol as pods: the label party drives, feature parties answer.

The plumbing (wires, hello, PSI, the order, stop, refusals) is :mod:`foedus.vertical.parties`;
this module adds the Paillier training steps. ``align`` also carries the label party's
Paillier public key and ``fraction_bits``; then::

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
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from foedus.core.message import Kind, Message
from foedus.vertical.linear import Task, partial_scores
from foedus.vertical.paillier import FixedPoint, KeyPair, PublicKey, from_bytes, to_bytes, width
from foedus.vertical.parties import (
    FeatureSide,
    LabelSide,
    Rejections,
    RoundResult,
    Topics,
    array,
    as_bytes,
    feature_graph,
    label_graph,
    u8,
)

__all__ = ["FeaturePartyPod", "LabelPartyPod", "Rejections", "RoundResult", "Topics",
           "feature_graph", "label_graph"]


class LabelPartyPod(LabelSide):
    """The party with the labels: aligns the entities, drives the rounds, evaluates.

    ``key_bits``: the Paillier modulus (2048 for real data; 1024 is quick enough for demos and
    tests). ``fraction_bits``: the fixed point of every encrypted number. The rest is
    :class:`~foedus.vertical.parties.LabelSide`'s.
    """

    def __init__(
        self, *, job_id: str, party: str, parties: Sequence[str], task: Task,
        train: tuple[Sequence[str], np.ndarray, np.ndarray],
        test: tuple[Sequence[str], np.ndarray, np.ndarray], rounds: int,
        learning_rate: float, key_bits: int = 2048, fraction_bits: int = 32,
        round_timeout: float = 60.0, join_timeout: float | None = None,
    ) -> None:
        super().__init__(job_id=job_id, party=party, parties=parties, task=task, train=train,
                         test=test, rounds=rounds, round_timeout=round_timeout,
                         join_timeout=join_timeout)
        self.learning_rate = learning_rate
        self.key_bits, self.fraction_bits = key_bits, fraction_bits
        d = self.train_x.shape[1]
        self.weights = np.zeros((d, task.outputs))
        self.bias = np.zeros(task.outputs)

    async def _protocol(self) -> None:
        if not await self._join():
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
            self._record(RoundResult(t, self.task.metrics(z_test, self.test_y),
                                     time.perf_counter() - began,
                                     dict(self.rejected.counts - rejected_before)))

    async def _align(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """PSI with every party, then the order of the common rows and the public key."""
        aligned = await self._intersect()
        if aligned is None:
            return None
        salt, train_order, test_order = aligned
        self.keys = await asyncio.to_thread(KeyPair, self.key_bits)
        self.fixed = FixedPoint(self.keys.public.n, self.fraction_bits)
        n = self.keys.public.n
        for party in self.parties:
            await self._send(party, "align", params={
                "train": train_order, "test": test_order, "salt": u8(salt),
                "public_key": u8(n.to_bytes(width(n), "big"))},
                fraction_bits=self.fraction_bits)
        return await self._collect("scores", 0, self._scores)

    def _scores(self, msg: Message) -> tuple[np.ndarray, np.ndarray]:
        k = self.task.outputs
        train = array(msg, "train", np.float64, (len(self.train_ids), k))
        test = array(msg, "test", np.float64, (len(self.test_ids), k))
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


class FeaturePartyPod(FeatureSide):
    """A party with columns and no labels: answers the label party, keeps its own weights.

    ``learning_rate`` of its gradient steps; the rest is
    :class:`~foedus.vertical.parties.FeatureSide`'s.
    """

    def __init__(self, *, job_id: str, party: str, label_party: str, task: Task,
                 ids: Sequence[str], x: np.ndarray, learning_rate: float,
                 idle_timeout: float = 120.0, max_ids: int = 10_000_000,
                 keep_received: bool = False, join_timeout: float | None = None) -> None:
        super().__init__(job_id=job_id, party=party, label_party=label_party, task=task,
                         ids=ids, x=x, idle_timeout=idle_timeout, max_ids=max_ids,
                         keep_received=keep_received, join_timeout=join_timeout)
        self.learning_rate = learning_rate
        self.weights = np.zeros((self.x.shape[1], task.outputs))
        self.round = 0
        self._pending: list[int] | None = None  # this round's masks
        self._train = self._test = np.zeros(0, np.int64)
        self._key: PublicKey | None = None
        self._fixed: FixedPoint | None = None
        self._xint = np.zeros((0, 0), np.int64)

    def _steps(self) -> dict[str, Callable[[Message], None]]:
        return super()._steps() | {"align": self._align, "residuals": self._residuals,
                                   "unmasked": self._unmasked}

    def _new_run(self) -> None:
        self.round, self._pending, self._key = 0, None, None
        self.weights = np.zeros_like(self.weights)

    def _align(self, msg: Message) -> None:
        if self._key is not None:
            raise ValueError("this run is aligned already")
        _, train, test = self._order(msg)
        key = as_bytes(msg, "public_key", 4096)
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
