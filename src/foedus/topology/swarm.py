"""Swarm (decentralized) FL: peers and one shared topic, no server.

Every peer is a :class:`~foedus.roles.peer.PeerPod` in its own graph. All peers publish on, and
read from, the job's swarm topic; a peer ignores its own messages. Pods and wires (``~>`` is a
topic)::

    peer P graph:  swarm_in(foedus.J.swarm, all but P's own) -> peer.model
                   peer.model_out -> model_out ~> foedus.J.swarm   (retained: the newest model)
                   peer.control   -> control_out ~> foedus.J.swarm (leave notices, not retained)

The topic is retained, so its current value is always the newest model any peer published: a
peer that joins late (``join=True``) receives it first and starts from there.

:class:`Swarm` is the ``swarm`` topology: one actor per client, acting as a peer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence

from foedus.codec import DEFAULT_MAX_SIZE
from foedus.config.parts import JobParts, client_ids, pipeline_of
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.errors import ConfigError
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.runtime import Runtime
from foedus.roles.peer import MODES, PeerPod, PeerRecord
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import LinkMeter, topics
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink

log = logging.getLogger("foedus.swarm")


def swarm_topic(job_id: str) -> str:
    """The one topic a swarm shares (job ids are validated as for every topology)."""
    return topics(job_id).model.rsplit(".", 1)[0] + ".swarm"


def swarm_graph(peer: PeerPod, transport: Transport, *, max_message_size: int | None = None
                ) -> Graph:
    """One peer's graph on the job's swarm topic."""
    topic = swarm_topic(peer.job_id)

    def not_mine(msg: Message) -> bool:
        return msg.sender != peer.peer_id

    swarm_in = Downlink(transport, topic, job_id=peer.job_id, accept=not_mine, name="swarm_in",
                        max_size=max_message_size or DEFAULT_MAX_SIZE)
    model_out = Uplink(transport, topic, retain=True, name="model_out")
    control_out = Uplink(transport, topic, name="control_out")
    graph = Graph(f"{peer.job_id}/peer/{peer.peer_id}").add(swarm_in, peer, model_out,
                                                            control_out)
    graph.connect("swarm_in.out", f"{peer.name}.model")
    graph.connect(f"{peer.name}.model_out", "model_out.in")
    graph.connect(f"{peer.name}.control", "control_out.in")
    return graph


async def run_swarm(
    peers: Sequence[PeerPod], transport: Transport | Callable[[str], Transport], *,
    queue_size: int = 16, timeout: float | None = None,
) -> dict[str, list[PeerRecord]]:
    """Run peers in this process until each has finished its rounds; their histories by id.

    ``transport`` is one shared transport (in-process) or a function from peer id to that
    peer's own transport. ``timeout`` bounds the whole run (``None``: no bound).
    """
    runtimes = [
        Runtime(swarm_graph(p, transport if isinstance(transport, Transport)
                            else transport(p.peer_id)), queue_size=queue_size)
        for p in peers
    ]
    started: list[Runtime] = []
    try:
        for rt in runtimes:
            await rt.start()
            started.append(rt)
        await asyncio.wait_for(asyncio.gather(*(rt.wait() for rt in runtimes)), timeout)
    finally:
        for rt in reversed(started):
            await rt.stop()
    failures = [f for rt in runtimes for f in rt.stats.failures if f.wire == "run"]
    if failures:
        raise failures[0]
    return {p.peer_id: p.history for p in peers}


@topologies.register("swarm")
class Swarm(Topology):
    """Peers and no server (see :class:`~foedus.roles.peer.PeerPod` for ``mode``,
    ``neighbors``, ``mixing_rounds`` and ``join_timeout``, how long a peer waits for the others
    to start). Actors: the client ids, each a peer. Peers here that never hear from another
    peer fail the job (:func:`alone`).

    The job's round ``r`` is over here when every peer run here finished it; its record's
    ``accepted`` counts the other peers' models those peers averaged into their own
    (:attr:`PeerRecord.accepted`: with ``neighbors: k``, ``k`` each, not every model they
    received), their refusals, and the test metrics of the first of them (every peer reaches
    the same model once the swarm agrees).
    """

    leader = None

    def __init__(self, neighbors: int | None = None, mode: str = "gossip",
                 mixing_rounds: int = 0, join_timeout: float = 30.0) -> None:
        if mode not in MODES:
            raise ConfigError(f"params.mode: got {mode!r}; allowed: {', '.join(MODES)}")
        if neighbors is not None and (isinstance(neighbors, bool)
                                      or not isinstance(neighbors, int) or neighbors < 1):
            raise ConfigError(f"params.neighbors: expected an integer >= 1, got {neighbors!r}")
        if isinstance(mixing_rounds, bool) or not isinstance(mixing_rounds, int) \
                or mixing_rounds < 0:
            raise ConfigError(f"params.mixing_rounds: expected an integer >= 0, "
                              f"got {mixing_rounds!r}")
        if isinstance(join_timeout, bool) or not isinstance(join_timeout, int | float) \
                or not 0 < join_timeout < math.inf:
            raise ConfigError(f"params.join_timeout: expected a number of seconds > 0, got "
                              f"{join_timeout!r}")
        self.mode, self.neighbors, self.mixing_rounds = mode, neighbors, mixing_rounds
        self.join_timeout = float(join_timeout)

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        self.refuse_aggregator(spec, "averages the peers' models itself (gossip or all-reduce)")
        if spec.clients.count < 2:
            raise ConfigError(f"clients.count: a swarm needs 2 peers or more, got "
                              f"{spec.clients.count} (one peer would only train alone)")
        others = spec.clients.count - 1
        if self.neighbors is not None and self.neighbors > others:
            # refused, not capped: a user who asks for k neighbours wants partial gossip, and
            # running full averaging instead would change the algorithm without a word
            raise ConfigError(
                f"topology.params.neighbors: {self.neighbors} is more than the {others} other "
                f"peers of clients.count={spec.clients.count}; use at most {others}, or leave "
                "neighbors out to average with every peer")
        if self.mixing_rounds >= spec.rounds:
            raise ConfigError(f"topology.params.mixing_rounds: expected fewer than rounds="
                              f"{spec.rounds}, got {self.mixing_rounds}")
        if pipeline_of(spec):
            raise ConfigError(f"pipeline: swarm peers share whole models and apply no pipeline "
                              f"stages, so {[p.type for p in spec.pipeline]} would never run; "
                              "remove it or use topology centralized")
        if spec.clients.max_examples is not None:
            raise ConfigError("clients.max_examples: not enforced by topology swarm yet (a "
                              "leader's aggregate claims every peer's examples); remove it")
        self.refuse_unused(spec, "a peer waits for the peers it knows alive",
                           "clients.min_clients", "clients.per_round")

    def actors(self, spec: JobSpec) -> list[str]:
        return client_ids(spec)

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        spec = job.spec
        here = [(i, cid) for i, cid in enumerate(client_ids(spec)) if cid in actors]
        peers = [
            PeerPod(job_id=spec.job_id, peer_id=cid, model=job.make_model(), data=job.shares[i],
                    rounds=spec.rounds, expected_peers=spec.clients.count,
                    epochs=spec.clients.epochs, round_timeout=spec.round_timeout,
                    mode=self.mode, neighbors=self.neighbors,
                    mixing_rounds=self.mixing_rounds, seed=spec.seed,
                    join_timeout=self.join_timeout,
                    peers=client_ids(spec),
                    # the first peer here evaluates each round: the job's per-round metrics
                    eval_data=job.test if n == 0 and job.server_evaluates else None)
            for n, (i, cid) in enumerate(here)
        ]
        runtimes = {p.peer_id: Runtime(swarm_graph(p, transport_for(p.peer_id))) for p in peers}
        meter = LinkMeter(*(rt.graph for rt in runtimes.values()))
        rounds = _SwarmRounds(peers, job.report_round, meter)
        for p in peers:
            p.round_listeners.append(rounds.on_peer_round)
        return Assembly(
            runtimes, None, history=lambda: list(rounds.history),
            params=lambda: peers[0].params if peers else None,
            records=lambda: {p.peer_id: [r.to_dict() for r in p.history] for p in peers},
            failure=lambda: alone(peers),
        )


def alone(peers: Sequence[PeerPod]) -> str | None:
    """Why the peers here failed, when none of them ever received another peer's model: each
    trained alone, which is not federated learning (the others were never started, or use
    another transport or job id). One that heard from a peer even once is not alone."""
    if not peers or any(r.received for p in peers for r in p.history) or \
            not all(p.history for p in peers):
        return None
    names = ", ".join(p.peer_id for p in peers)
    rounds = max(len(p.history) for p in peers)
    return (f"{names} heard from no other peer in {rounds} rounds (updates accepted 0): "
            "trained alone, it learned nothing from the federation; are the other peers "
            "running, on the same transport and job id?")


class _SwarmRounds:
    """Folds the rounds of the peers run here into the job's rounds, one record each."""

    def __init__(self, peers: Sequence[PeerPod], report: Callable[[RoundRecord], None],
                 meter: LinkMeter) -> None:
        self.peers = list(peers)
        self.report = report
        self.meter = meter
        self.history: list[RoundRecord] = []
        self._pending: dict[int, list[PeerRecord]] = {}
        self._rejected: Counter[str] = Counter()

    def on_peer_round(self, peer: PeerPod, record: PeerRecord) -> None:
        done = self._pending.setdefault(record.round, [])
        done.append(record)
        if len(done) < len(self.peers):
            return
        del self._pending[record.round]
        total: Counter[str] = sum((p.rejected for p in self.peers), Counter())
        rejected = dict(total - self._rejected)
        self._rejected = total
        first = next((r for r in done if r.metrics), done[0])
        others = self.peers[0].expected_peers - 1  # the models each peer waits for at most
        job_round = RoundRecord(
            record.round, accepted=sum(r.accepted for r in done), rejected=rejected,
            missing_clients=max(0, others - min(r.received for r in done)),
            duration_s=max(r.duration_s for r in done), metrics=dict(first.metrics),
        )
        job_round.bytes_in, job_round.bytes_out = self.meter.delta()
        self.history.append(job_round)
        self.report(job_round)
