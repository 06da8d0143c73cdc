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

from foedus.core.filter import Filter
from foedus.core.runtime import Runtime, run_graphs
from foedus.roles.async_server import AsyncServerPod, VersionRecord
from foedus.roles.client import ClientPod
from foedus.topology.centralized import client_graph, server_graph
from foedus.transport.base import Transport


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
        server_graph(server, server_transport, filters=server_filters),
        queue_size=queue_size,
    )
    await run_graphs(server_runtime, *client_runtimes)
    return server.history
