"""Centralized FL: one server, many clients, three topics.

Pods and wires (``->`` is a wire inside a graph, ``~>`` a topic on the transport)::

    client graph:  downlink(model topic) -> client -> [client filters] -> uplink ~> updates topic
    server graph:  downlink(updates topic) -> [server filters] -> server -> uplink ~> model topic
                                                                  server.events -> (optional)

The model topic is published with ``retain=True`` so a client that joins late receives the
current global model first; the updates topic is read with a consumer group so a restarted server
resumes where it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from foedus.codec import DEFAULT_MAX_SIZE
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.runtime import Runtime, run_graphs
from foedus.privacy.order import check_filters
from foedus.roles.async_server import AsyncServerPod
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


@dataclass(frozen=True)
class Topics:
    model: str
    updates: str


def topics(job_id: str) -> Topics:
    """The topic names of a job; job ids are restricted so they are valid on every broker."""
    if not _JOB_ID.match(job_id):
        raise ConfigError(
            f"job_id {job_id!r} must start with a letter or digit and contain only letters, "
            "digits, '.', '_' or '-' (at most 101 characters)"
        )
    return Topics(model=f"foedus.{job_id}.model", updates=f"foedus.{job_id}.updates")


def server_graph(
    server: ServerPod | AsyncServerPod, transport: Transport, *,
    filters: Sequence[Filter] = (), max_message_size: int | None = None,
) -> Graph:
    """The server's graph (synchronous or FedBuff: the same wires); ``filters`` undo the
    clients' encoders, in the order given."""
    t = topics(server.job_id)
    downlink = Downlink(
        transport, t.updates, job_id=server.job_id, group=f"{server.job_id}.server",
        name="updates_in", max_size=max_message_size or DEFAULT_MAX_SIZE,
    )
    uplink = Uplink(transport, t.model, retain=True, name="model_out")
    graph = Graph(f"{server.job_id}/server").add(downlink, server, uplink)
    # decoders of deltas see each global model the server broadcasts (a feedback edge)
    graph.pipe("updates_in.out", filters, f"{server.name}.update",
               model=f"{server.name}.model", model_feedback=True)
    graph.connect(f"{server.name}.model", "model_out.in")
    return graph


def client_graph(
    client: ClientPod, transport: Transport, job_id: str, *, filters: Sequence[Filter] = (),
) -> Graph:
    """A client's graph; ``filters`` (privacy, compression) run on every outgoing update."""
    t = topics(job_id)

    def for_me(msg: Message) -> bool:
        return msg.header.recipient in (None, client.client_id)

    downlink = Downlink(transport, t.model, job_id=job_id, accept=for_me, name="model_in")
    uplink = Uplink(transport, t.updates, name="update_out")
    graph = Graph(f"{job_id}/{client.client_id}").add(downlink, client, uplink)
    graph.connect("model_in.out", f"{client.name}.model")
    # encoders of deltas see the model the client trains from
    graph.pipe(f"{client.name}.update", filters, "update_out.in", model="model_in.out")
    return graph


async def run_centralized(
    server: ServerPod, server_transport: Transport,
    clients: Sequence[tuple[ClientPod, Transport, Sequence[Filter]]],
    *, server_filters: Sequence[Filter] = (), queue_size: int = 16,
) -> list[RoundRecord]:
    """Run a whole job in this process: every actor its own graph and runtime.

    Clients start first, so each is subscribed before the server broadcasts round 1.
    """
    for _, _, client_filters in clients:  # decoders must undo the encoders in reverse order
        check_filters(client_filters, server_filters)
    client_runtimes = [
        Runtime(client_graph(c, t, server.job_id, filters=f), queue_size=queue_size)
        for c, t, f in clients
    ]
    server_runtime = Runtime(
        server_graph(server, server_transport, filters=server_filters), queue_size=queue_size
    )
    await run_graphs(server_runtime, *client_runtimes)
    return server.history
