"""Asynchronous FL (FedBuff): the centralized wiring, with a buffering server and clients that
never wait for a round.

The topics and client graphs are exactly the centralized ones, so a client does not know whether
its server is synchronous; only the pacing of the pods differs. Pods and wires::

    client graph:  model_in(foedus.J.model) -> async client -> [filters] -> update_out
                                                                  ~> foedus.J.updates
    server graph:  updates_in(foedus.J.updates) -> [filters] -> async server -> model_out
                                                                  ~> foedus.J.model (retained)

The model topic is retained: a client that (re)connects starts from the newest version.
"""

from __future__ import annotations

from collections.abc import Sequence

from foedus.codec import DEFAULT_MAX_SIZE
from foedus.core.filter import MODEL_WIRE, Filter, wants_model
from foedus.core.graph import Graph
from foedus.core.runtime import Runtime, run_graphs
from foedus.roles.async_server import AsyncServerPod, VersionRecord
from foedus.roles.client import ClientPod
from foedus.topology.centralized import client_graph, topics
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink


def async_server_graph(
    server: AsyncServerPod, transport: Transport, *, filters: Sequence[Filter] = (),
    max_message_size: int | None = None,
) -> Graph:
    """The FedBuff server's graph; ``filters`` undo the clients' encoders, in order."""
    t = topics(server.job_id)
    downlink = Downlink(
        transport, t.updates, job_id=server.job_id, group=f"{server.job_id}.server",
        name="updates_in", max_size=max_message_size or DEFAULT_MAX_SIZE,
    )
    uplink = Uplink(transport, t.model, retain=True, name="model_out")
    graph = Graph(f"{server.job_id}/async-server").add(downlink, server, uplink)
    current = "updates_in.out"
    for f in filters:
        graph.add(f)
        graph.connect(current, f"{f.name}.in")
        current = f"{f.name}.out"
        if wants_model(f):
            graph.connect(f"{server.name}.model", f"{f.name}.{MODEL_WIRE}", feedback=True)
    graph.connect(current, f"{server.name}.update")
    graph.connect(f"{server.name}.model", "model_out.in")
    return graph


async def run_asynchronous(
    server: AsyncServerPod, server_transport: Transport,
    clients: Sequence[tuple[ClientPod, Transport, Sequence[Filter]]],
    *, server_filters: Sequence[Filter] = (), queue_size: int = 16,
) -> list[VersionRecord]:
    """Run a FedBuff job in this process; clients are usually
    :class:`~foedus.roles.async_client.AsyncClientPod` (plain clients work, but queue up)."""
    client_runtimes = [
        Runtime(client_graph(c, t, server.job_id, filters=f), queue_size=queue_size)
        for c, t, f in clients
    ]
    server_runtime = Runtime(
        async_server_graph(server, server_transport, filters=server_filters),
        queue_size=queue_size,
    )
    await run_graphs(server_runtime, *client_runtimes)
    return server.history
