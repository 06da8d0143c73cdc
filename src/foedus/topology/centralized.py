"""Centralized FL: one server, many clients, two topics; the ``centralized`` topology.

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
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from foedus.codec import DEFAULT_MAX_SIZE
from foedus.config.parts import JobParts, client_ids, pipeline_of
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter, Stage
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.runtime import Runtime, run_graphs
from foedus.privacy.order import check_filters
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink

if TYPE_CHECKING:
    from foedus.roles.async_server import AsyncServerPod
    from foedus.topology.secure_sum import SecureJob

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


#: how many messages one sender may send naming one round before the server's update link
#: refuses the rest as ``flood``: one update, a secure sum's four protocol steps, a failure and
#: redeliveries after a restart fit well within it; a flood under one name does not
MESSAGES_PER_ROUND = 16


def updates_link(server: ServerPod | AsyncServerPod, transport: Transport,
                 max_message_size: int | None = None) -> Downlink:
    """The server's reader of the updates topic: a durable group, and (when the server knows
    its participants) non-participants' payloads dropped before they are decoded, where the
    transport can tell, and at most :data:`MESSAGES_PER_ROUND` messages per sender and round.
    The FedBuff server takes several updates per version from one client: no per-round bound."""
    synchronous = not _instance_of(server, "foedus.roles.async_server", "AsyncServerPod")
    return Downlink(
        transport, topics(server.job_id).updates, job_id=server.job_id,
        group=f"{server.job_id}.server", name="updates_in",
        max_size=max_message_size or DEFAULT_MAX_SIZE, senders=server.participants,
        per_round=MESSAGES_PER_ROUND if synchronous else None,
    )


def server_graph(
    server: ServerPod | AsyncServerPod, transport: Transport, *,
    filters: Sequence[Filter] = (), max_message_size: int | None = None,
) -> Graph:
    """The server's graph (synchronous or FedBuff: the same wires); ``filters`` undo the
    clients' encoders, in the order given."""
    t = topics(server.job_id)
    downlink = updates_link(server, transport, max_message_size)
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



def _instance_of(value: object, module: str, name: str) -> bool:
    """``isinstance(value, module.name)``, without importing ``module`` when it is not yet:
    nothing can be an instance of a class whose module was never imported. A centralized job
    thus never loads the FedBuff server or the secure-sum machinery it does not use (they were
    a tenth of the ``foedus`` command's own import time)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(value, getattr(loaded, name))


def secure_plan(spec: JobSpec, pipeline: Sequence[Stage], topology: str) -> SecureJob | None:
    """How ``spec``'s secure sum runs, ``None`` without one; refuses a secure sum that cannot
    work (e.g. on another topology than centralized, or with a robust aggregator)."""
    if not any(_instance_of(s, "foedus.privacy.secagg_pods", "SecureSumStage") for s in pipeline):
        return None  # what SecureJob.of answers without a secure sum
    from foedus.topology.secure_sum import SecureJob

    return SecureJob.of(pipeline, participants=client_ids(spec),
                        clients_per_round=spec.clients.per_round, topology=topology,
                        aggregator=spec.aggregator.type)


@topologies.register("centralized")
class Centralized(Topology):
    """One server and ``clients.count`` clients: the actors ``server``, ``client-000``, ...

    A pipeline holding ``secure-sum`` runs the same actors with the secure-sum protocol pods in
    their graphs (:mod:`foedus.topology.secure_sum`).
    """

    supports_server_features = True

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        secure_plan(spec, pipeline_of(spec), self.name)
        per_round = spec.clients.per_round or spec.clients.count
        self.require_updates(spec, per_round, "clients a round")

    def check_simulation(self, spec: JobSpec) -> None:
        if secure_plan(spec, pipeline_of(spec), self.name) is not None:
            raise ConfigError("pipeline: secure-sum needs its own pods and topic, which the "
                              "simulator does not build; run the job with foedus run")

    def actors(self, spec: JobSpec) -> list[str]:
        return ["server", *client_ids(spec)]

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        spec = job.spec
        secure = secure_plan(spec, job.pipeline, self.name)
        if secure is None:  # decoders must undo the encoders in reverse order
            check_filters(job.client_filters(), job.server_filters())
        runtimes: dict[str, Runtime] = {}
        server: ServerPod | None = None
        if "server" in actors:
            if secure is None:
                server = job.make_server()
                runtimes[server.name] = Runtime(server_graph(
                    server, transport_for(server.name), filters=job.server_filters()))
            else:
                from foedus.roles.secure_server import SecureServerPod

                server = job.make_server(SecureServerPod)
                runtimes[server.name] = Runtime(
                    secure.server_graph(server, transport_for(server.name)))
        for i, cid in enumerate(client_ids(spec)):
            if cid not in actors:
                continue  # its share is never read here (per-client files live elsewhere)
            client = job.make_client(i)
            transport = transport_for(cid)
            runtimes[cid] = Runtime(
                client_graph(client, transport, spec.job_id, filters=job.client_filters())
                if secure is None else secure.client_graph(client, transport, spec.job_id))
        return server_assembly(runtimes, server)

    def simulation_server(self, job: JobParts) -> ServerPod:
        return job.make_server()


class LinkMeter:
    """Bytes the links of some graphs moved since the last call: what one round cost."""

    def __init__(self, *graphs: Graph) -> None:
        self.links = [p for g in graphs for p in g.pods.values()
                      if isinstance(p, Downlink | Uplink)]
        self._seen = (0, 0)

    def delta(self) -> tuple[int, int]:
        """``(bytes received, bytes sent)`` since the previous call."""
        now = (sum(p.bytes_in for p in self.links if isinstance(p, Downlink)),
               sum(p.bytes_out for p in self.links if isinstance(p, Uplink)))
        before, self._seen = self._seen, now
        return now[0] - before[0], now[1] - before[1]


def meter_rounds(server: ServerPod, graph: Graph) -> None:
    """Record in each round what the server's links moved (the broadcast of that round and the
    updates that came in), before any other listener (MLOps exporters) reads the record."""
    meter = LinkMeter(graph)

    def count(record: RoundRecord) -> None:
        record.bytes_in, record.bytes_out = meter.delta()

    server.round_listeners.insert(0, count)


def server_assembly(runtimes: dict[str, Runtime], server: ServerPod | None) -> Assembly:
    """An :class:`Assembly` whose job is its server's, when the server runs here (its rounds
    then record the bytes its links moved)."""
    if server is None:
        return Assembly(runtimes, None, history=list, params=lambda: None)
    meter_rounds(server, runtimes[server.name].graph)
    return Assembly(runtimes, server.name, history=lambda: list(server.history),
                    params=lambda: server.params, stop_reason=lambda: server.stop_reason,
                    resumed_from=lambda: server.resumed_from)
