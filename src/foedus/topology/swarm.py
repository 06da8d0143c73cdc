"""Swarm (decentralized) FL: peers and one shared topic, no server.

Every peer is a :class:`~foedus.roles.peer.PeerPod` in its own graph. All peers publish on, and
read from, the job's swarm topic; a peer ignores its own messages. Pods and wires (``~>`` is a
topic)::

    peer P graph:  swarm_in(foedus.J.swarm, all but P's own) -> peer.model
                   peer.model_out -> model_out ~> foedus.J.swarm   (retained: the newest model)
                   peer.control   -> control_out ~> foedus.J.swarm (leave notices, not retained)

The topic is retained, so its current value is always the newest model any peer published: a
peer that joins late (``join=True``) receives it first and starts from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from foedus.codec import DEFAULT_MAX_SIZE
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.runtime import Runtime
from foedus.roles.peer import PeerPod, PeerRecord
from foedus.topology.centralized import topics
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
