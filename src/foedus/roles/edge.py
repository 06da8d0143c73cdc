"""The edge aggregator of hierarchical FL: a server for its children, a client of its parent.

An edge sits between a parent (the root server or another edge) and its children (clients or
further edges). On each model from its parent it runs one round of its own: re-broadcast the
model to its children (with the edge's own round number, so its children's checks are local),
collect their updates until all answered or its deadline passed with at least ``min_children``,
aggregate them, and send *one* update to the parent whose ``num_examples`` is the sum of the
children's. With FedAvg this makes a tree of edges compute exactly the flat weighted mean: a
weighted mean of weighted means, each weighted by its total, is the mean over all leaves.

What comes from above is checked too: the parent's model topic is as open as any topic, so the
edge obeys a model or a ``stop`` only from its ``parent`` (the sender name the parent
broadcasts under), a ``stop`` only from the run of the newest model it served, and only a model
whose values are finite. Anything else is refused, counted in :attr:`EdgePod.refused` and logged
in one line, and the edge goes on (names are not proof of identity: with a shared broker,
protect the parent's model topic with the broker's ACL or mutual TLS).

Errors travel as values, as everywhere: an edge without quorum answers its parent with an
``ERROR`` message (the parent skips it for the round, exactly as it skips a failed client), and
an edge that dies simply stops answering, which its parent's deadline absorbs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from foedus.aggregate.base import Aggregator
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import check_finite
from foedus.core.pod import Pod, Wire
from foedus.roles.collect import RoundCollector

log = logging.getLogger("foedus.edge")


@dataclass
class EdgeRecord:
    """One edge round: which parent round it served and what its children did."""

    round: int
    parent_round: int
    accepted: int = 0
    num_examples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed_children: list[str] = field(default_factory=list)
    missing_children: int = 0
    duration_s: float = 0.0
    status: str = "ok"  # "ok" or "no_quorum"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EdgePod(Pod):
    """Wires: ``model`` in from the parent, ``model`` out to the children (named ``down`` here,
    since a pod cannot have an input and an output of one name), ``update`` in from the
    children, ``up`` out to the parent.

    ``children``: the ids of the edge's children, its roster (``None`` admits any sender);
    updates pass the same :class:`~foedus.roles.admission.Admission` as at the root server.
    ``parent``: the sender name of the parent's broadcasts (``None``: any, as before); models
    and stops from anyone else are refused (:attr:`refused`: ``wrong_sender``, ``other_run``,
    ``not_finite``).
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("model"), Wire("update"))
    outputs: ClassVar[tuple[Wire, ...]] = (
        Wire("down"), Wire("up"), Wire("events", required=False),
    )

    def __init__(
        self, *, job_id: str, edge_id: str, aggregator: Aggregator, expected_children: int,
        min_children: int | None = None, round_timeout: float = 30.0,
        children: Sequence[str] | None = None, name: str = "edge", parent: str | None = None,
    ) -> None:
        super().__init__(name)
        if expected_children < 1:
            raise ConfigError(f"edge {edge_id!r}: expected_children must be at least 1, "
                              f"got {expected_children}")
        min_children = expected_children if min_children is None else min_children
        if not 1 <= min_children <= expected_children:
            raise ConfigError(
                f"edge {edge_id!r}: min_children must be between 1 and "
                f"expected_children={expected_children}, got {min_children}"
            )
        if round_timeout <= 0:
            raise ConfigError(f"edge {edge_id!r}: round_timeout must be positive, "
                              f"got {round_timeout}")
        self.job_id = job_id
        self.edge_id = edge_id
        self.aggregator = aggregator
        self.expected_children = expected_children
        self.min_children = min_children
        self.round_timeout = round_timeout
        self.history: list[EdgeRecord] = []
        self.finished = asyncio.Event()
        self.children = sorted(children) if children is not None else None
        self.collector = RoundCollector(  # the same admission as the root server's
            job_id=job_id, aggregator=aggregator, participants=self.children, logger=log,
            label=f"edge {edge_id} ",
        )
        self._rounds_run = 0
        self._parent_models: asyncio.Queue[Message] = asyncio.Queue()
        self.parent = parent
        #: what came from above and was refused, by reason
        self.refused: Counter[str] = Counter()
        self._run: object = None  # the run id of the newest parent model

    def _refuse(self, msg: Message, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        log.warning("edge %s: refused a %s from %.64r on the parent's topic: %s: %.200s",
                    self.edge_id, msg.kind.value, msg.sender, reason, detail)

    @property
    def current_round(self) -> int:
        """The edge's own round; 0 between rounds."""
        return self.collector.current_round

    @property
    def rejections(self) -> Counter[str]:
        """Children's refused updates by reason over the whole job."""
        return self.collector.rejections

    # ---- from the parent ------------------------------------------------------------------
    def on_model(self, msg: Message) -> None:
        """Queue the parent's model; the round itself runs in :meth:`run`, so this handler
        returns at once and children's updates keep flowing in while the edge collects."""
        if msg.header.job_id != self.job_id:
            log.warning("edge %s: ignored a model for job %r", self.edge_id, msg.header.job_id)
            return
        if msg.kind not in (Kind.MODEL, Kind.CONTROL) or (
                msg.kind is Kind.CONTROL and msg.meta.get("action") != "stop"):
            return
        if self.parent is not None and msg.sender != self.parent:
            self._refuse(msg, "wrong_sender", f"the parent is {self.parent!r}")
            return
        if msg.kind is Kind.MODEL:
            selected = msg.meta.get("selected")
            if selected is not None and self.edge_id not in selected:
                return  # the parent sampled other children this round
            try:
                check_finite(msg.params)
            except RejectedUpdate as exc:
                self._refuse(msg, exc.reason, exc.detail)
                return
            self._run = msg.meta.get("run")
        elif self._run is not None and msg.meta.get("run") != self._run:
            self._refuse(msg, "other_run", f"a stop of run {msg.meta.get('run')!r:.40}, "
                                           f"the newest model is of run {self._run!r:.40}")
            return
        self._parent_models.put_nowait(msg)

    async def run(self) -> None:
        while True:
            parent = await self._parent_models.get()
            while not self._parent_models.empty():  # behind? serve only the newest model
                newer = self._parent_models.get_nowait()
                if parent.kind is not Kind.CONTROL:
                    parent = newer
            if parent.kind is Kind.CONTROL:
                # relay the parent's stop as it is (its run id, "finished"): clients obey only
                # their run's stop, and a bare one would leave them waiting forever
                meta = {k: v for k, v in parent.meta.items() if k != "selected"}
                await self.send("down", Message.create(
                    Kind.CONTROL, job_id=self.job_id, round=self._rounds_run,
                    sender=self.edge_id, meta={**meta, "action": "stop"},
                ))
                self.finished.set()
                return
            await self._run_round(parent)

    async def _run_round(self, parent: Message) -> None:
        began = time.perf_counter()
        self._rounds_run += 1
        rnd = self._rounds_run
        await self.collector.open(rnd, parent.params)
        meta = {k: v for k, v in parent.meta.items() if k != "selected"}
        await self.send("down", Message.create(
            Kind.MODEL, job_id=self.job_id, round=rnd, sender=self.edge_id,
            params=parent.params, meta=meta,
        ))
        await self.collector.wait(self.expected_children, self.round_timeout)
        tally = await self.collector.close()
        record = EdgeRecord(
            rnd, parent.round, accepted=tally.accepted, num_examples=tally.num_examples,
            rejected=tally.rejected, failed_children=tally.failed_clients,
            missing_children=tally.missing(self.expected_children),
        )
        if record.accepted >= self.min_children:
            params = await self.collector.blocking(self.aggregator.edge_result)
            reply = parent.reply(
                Kind.UPDATE, self.edge_id, params=params, num_examples=record.num_examples,
                metrics=tally.client_metrics(),
                meta={"edge_accepted": record.accepted},
            )
        else:
            record.status = "no_quorum"
            reply = parent.reply(
                Kind.ERROR, self.edge_id,
                error=f"edge {self.edge_id}: {record.accepted} of {self.min_children} required "
                      "child updates arrived",
            )
            log.warning("edge %s round %d: no quorum (%d of %d)", self.edge_id, rnd,
                        record.accepted, self.min_children)
        record.duration_s = time.perf_counter() - began
        self.history.append(record)
        await self.send("up", reply)
        await self.send("events", Message.create(
            Kind.METRICS, job_id=self.job_id, round=rnd, sender=self.edge_id,
            meta=record.to_dict(),
        ))

    # ---- from the children ----------------------------------------------------------------
    async def on_update(self, msg: Message) -> None:
        await self.collector.offer(msg)
