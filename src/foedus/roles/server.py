"""The server's round loop (figure 3 of the ALCHIMIA seed) as one pod.

Each round: broadcast the global model on ``model`` -> collect updates arriving on ``update``
until every expected client answered, or the deadline passed with at least ``min_clients``
-> aggregate -> evaluate -> record -> next round. A client that fails (an ``ERROR`` message), is
late, or sends something invalid is skipped and recorded with a reason; it never stalls or
crashes the round. After the last round a ``CONTROL`` message with ``action: stop`` tells
clients the job is over.

Every broadcast (models and control messages) carries the server's *run id* in ``meta["run"]``:
random when the server starts afresh, taken back from the checkpoint when it resumes. A client
obeys a ``stop`` only from the run it is taking part in, so the retained ``stop`` a finished run
left on the broker cannot end the clients of the next run of the same job. A model broadcast
also names, in ``meta["requires"]``, the protections (:attr:`ServerPod.required_protections`:
masking, noise, clipping) the server expects on every update, so a client whose pipeline lacks
one refuses to send in the clear instead of being refused after the fact. With
:attr:`ServerPod.broadcast_signer` set (the ``sign`` stage), every broadcast is signed last.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from foedus.aggregate.base import Aggregator
from foedus.core.errors import BudgetExhausted, ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.core.pod import Pod, Wire
from foedus.roles.collect import RoundCollector

if TYPE_CHECKING:
    from foedus.roles.checkpoint import Checkpointer  # built by whoever checkpoints a job

log = logging.getLogger("foedus.server")

Evaluator = Callable[[Params], dict[str, float]]

#: the checkpoint's extra-state entry holding the run id (a resumed server is the same run)
RUN_STATE = "server:run"


@dataclass
class RoundRecord:
    """What happened in one round; the job's history is a list of these."""

    round: int
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed_clients: list[str] = field(default_factory=list)
    missing_clients: int = 0
    duration_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    client_metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"  # "ok", "no_quorum" or "aggregation_failed"
    #: bytes the job's leader received (updates) and sent (models) on the network this round
    bytes_in: int = 0
    bytes_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ServerPod(Pod):
    """Drives rounds. Wire ``update`` from the clients' uplink, ``model`` to their downlink."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("update"),)
    outputs: ClassVar[tuple[Wire, ...]] = (
        Wire("model"), Wire("events", required=False),
    )

    def __init__(
        self, *, job_id: str, initial_params: Params, aggregator: Aggregator, rounds: int,
        expected_clients: int, min_clients: int | None = None, round_timeout: float = 60.0,
        evaluate: Evaluator | None = None, checkpointer: Checkpointer | None = None,
        participants: Sequence[str] | None = None, clients_per_round: int | None = None,
        seed: int = 0, name: str = "server",
    ) -> None:
        super().__init__(name)
        if rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {rounds}")
        if expected_clients < 1:
            raise ConfigError(f"expected_clients must be at least 1, got {expected_clients}")
        if min_clients is None:
            min_clients = clients_per_round or expected_clients
        if not 1 <= min_clients <= expected_clients:
            raise ConfigError(
                f"min_clients must be between 1 and expected_clients={expected_clients}, "
                f"got {min_clients}"
            )
        if clients_per_round is not None:
            if participants is None or not 1 <= clients_per_round <= len(participants):
                raise ConfigError(
                    "clients_per_round needs the list of participants and must be between 1 "
                    f"and their number, got {clients_per_round}"
                )
            if min_clients > clients_per_round:
                raise ConfigError(
                    f"min_clients={min_clients} exceeds clients_per_round={clients_per_round}"
                )
        if round_timeout <= 0:
            raise ConfigError(f"round_timeout must be positive, got {round_timeout}")
        self.job_id = job_id
        self.params: dict[str, np.ndarray] = {k: np.array(v) for k, v in initial_params.items()}
        self.aggregator = aggregator
        self.rounds = rounds
        self.expected_clients = expected_clients
        self.min_clients = min_clients
        self.round_timeout = round_timeout
        self.evaluate = evaluate
        self.checkpointer = checkpointer
        self.participants = sorted(participants) if participants is not None else None
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.history: list[RoundRecord] = []
        self.round_listeners: list[Callable[[RoundRecord], None]] = []
        #: called before each round; raising BudgetExhausted ends the job cleanly
        self.round_guards: list[Callable[[int], None]] = []
        #: extra metadata for each round's model broadcast
        self.broadcast_meta: list[Callable[[int], dict[str, Any]]] = []
        #: the checkpoint's round this server resumed after (None: it started afresh)
        self.resumed_from: int | None = None
        self.stop_reason: str | None = None
        #: name -> (get, restore) of extra state saved with each checkpoint (pipeline stages)
        self.state_hooks: dict[str, tuple[Callable[[], dict[str, Any]],
                                          Callable[[dict[str, Any]], None]]] = {}
        self.collector = RoundCollector(
            job_id=job_id, aggregator=aggregator, participants=self.participants, logger=log,
        )
        #: this run of the job, in every broadcast's ``meta["run"]``: random for a fresh start,
        #: the checkpointed one on resume (clients of this run keep obeying it)
        self.run_id: str = secrets.token_hex(8)
        self.state_hooks[RUN_STATE] = (lambda: {"run_id": self.run_id}, self._restore_run)
        #: protections every update must carry (``foedus.core.filter`` names: mask, noise,
        #: clip), broadcast as ``meta["requires"]`` so clients without them refuse to send
        self.required_protections: frozenset[str] = frozenset()
        #: signs each broadcast as the last step (the ``sign`` stage's
        #: :meth:`~foedus.security.signing.SignStage.broadcast_signer`); None: unsigned
        self.broadcast_signer: Callable[[Message], Message] | None = None

    @property
    def rejections(self) -> Counter[str]:
        """Refused updates by reason over the whole job, for metrics exporters."""
        return self.collector.rejections

    @property
    def current_round(self) -> int:
        """The round being collected; 0 between rounds."""
        return self.collector.current_round

    # ---- the round loop -------------------------------------------------------------------
    async def run(self) -> None:
        start = self._resume()
        for rnd in range(start, self.rounds + 1):
            try:
                for guard in self.round_guards:
                    guard(rnd)
            except BudgetExhausted as exc:
                self.stop_reason = str(exc)
                log.warning("job %s stops before round %d: %s", self.job_id, rnd, exc)
                break
            await self._run_round(rnd)
        await self._broadcast(self._control("stop"))

    async def _run_round(self, rnd: int) -> None:
        began = time.perf_counter()
        selected = self.select(rnd)
        await self.collector.open(rnd, self.params, selected)
        expected = self.expected_clients if selected is None else len(selected)
        meta: dict[str, Any] = {}
        for extra in self.broadcast_meta:
            meta.update(extra(rnd))
        if selected is not None:
            meta["selected"] = selected
        if self.required_protections:
            meta["requires"] = sorted(self.required_protections)
        meta["run"] = self.run_id  # last: no stage hook can overwrite it
        await self._broadcast(Message.create(
            Kind.MODEL, job_id=self.job_id, round=rnd, sender=self.name, params=self.params,
            meta=meta,
        ))
        await self.collector.wait(expected, self.round_timeout)
        tally = await self.collector.close()  # late updates for this round are now stale
        record = RoundRecord(
            rnd, accepted=tally.accepted, rejected=tally.rejected,
            failed_clients=tally.failed_clients, missing_clients=tally.missing(expected),
            client_metrics=tally.client_metrics(),
        )
        if record.accepted >= max(self.min_clients, self.aggregator.min_updates()):
            try:
                self.params = await self.collector.blocking(self.aggregator.result)
            except RejectedUpdate as exc:  # e.g. a robust rule that needs more updates
                record.status = "aggregation_failed"
                record.rejected[exc.reason] = record.rejected.get(exc.reason, 0) + 1
                log.warning("round %d: aggregation failed (%s); global model kept", rnd, exc)
        else:
            record.status = "no_quorum"
            log.warning("round %d: %d of %d required updates arrived; global model kept",
                        rnd, record.accepted, self.min_clients)
        if self.evaluate is not None:
            record.metrics = await self.collector.blocking(self.evaluate, self.params)
        record.duration_s = time.perf_counter() - began
        self.history.append(record)
        for listener in self.round_listeners:  # before saving: listeners may add metrics
            listener(record)
        if self.checkpointer is not None:
            await asyncio.to_thread(
                self.checkpointer.save, rnd, self.params, self.aggregator.snapshot(),
                [r.to_dict() for r in self.history],
                {name: get() for name, (get, _) in self.state_hooks.items()},
            )
        await self.send("events", Message.create(  # carries the model: MLOps pods log it
            Kind.METRICS, job_id=self.job_id, round=rnd, sender=self.name, params=self.params,
            metrics=record.metrics, meta=record.to_dict(),
        ))

    def select(self, rnd: int) -> list[str] | None:
        """The clients sampled for round ``rnd`` (``None``: everyone). Seeded by (seed, round),
        so a re-run, or a server resumed from a checkpoint, samples the same clients."""
        if self.clients_per_round is None or self.participants is None:
            return None
        rng = np.random.default_rng([self.seed, rnd])
        chosen = rng.choice(len(self.participants), self.clients_per_round, replace=False)
        return [self.participants[i] for i in sorted(chosen)]

    # ---- inputs ---------------------------------------------------------------------------
    async def on_update(self, msg: Message) -> None:
        await self.collector.offer(msg)

    # ---- helpers --------------------------------------------------------------------------
    def _control(self, action: str) -> Message:
        """A control message of this run; a ``stop`` also says how far the run got, so a client
        can tell a finished run's stop from the run it takes part in."""
        meta: dict[str, Any] = {"action": action, "run": self.run_id}
        if action == "stop":
            meta["finished"] = True
            meta["rounds"] = len(self.history)
        return Message.create(
            Kind.CONTROL, job_id=self.job_id, round=self.current_round, sender=self.name,
            meta=meta,
        )

    async def _broadcast(self, msg: Message) -> None:
        """Send ``msg`` on ``model``, signed when the job signs (hashing a model is CPU work:
        a worker thread, so the loop keeps collecting)."""
        if self.broadcast_signer is not None:
            msg = await asyncio.to_thread(self.broadcast_signer, msg)
        await self.send("model", msg)

    def _restore_run(self, state: dict[str, Any]) -> None:
        run = state.get("run_id")
        if isinstance(run, str) and run:
            self.run_id = run

    def _resume(self) -> int:
        if self.checkpointer is None:
            return 1
        # a fixed-shape model's checkpoint must have its names and shapes (a tree's grows)
        fixed = self.aggregator.update_kind == "parameters"
        ckpt = self.checkpointer.load(like=self.params if fixed else None)
        if ckpt is None:
            return 1
        self.params = ckpt.params
        self.aggregator.restore(ckpt.aggregator_state)
        for name, (_, restore) in self.state_hooks.items():
            if name in ckpt.extra_state:
                restore(ckpt.extra_state[name])
        self.history = [RoundRecord(**r) for r in ckpt.history]
        self.resumed_from = ckpt.round
        log.info("resumed job %s after round %d", self.job_id, ckpt.round)
        return ckpt.round + 1

