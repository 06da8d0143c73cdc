"""Asynchronous FL (FedBuff): the centralized wiring, with a buffering server and clients that
never wait for a round.

The topics and client graphs are exactly the centralized ones, so a client does not know whether
its server is synchronous; only the pacing of the pods differs. Pods and wires::

    client graph:  model_in(foedus.J.model) -> async client -> [filters] -> update_out
                                                                  ~> foedus.J.updates
    server graph:  updates_in(foedus.J.updates) -> [filters] -> async server -> model_out
                                                                  ~> foedus.J.model (retained)

The model topic is retained: a client that (re)connects starts from the newest version.
:class:`Asynchronous` is the ``async`` topology; each applied buffer (a new model version) is
one of the job's rounds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Sequence

from foedus.aggregate.base import positive_number, whole_number
from foedus.config.parts import JobParts, client_ids, pipeline_of
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter
from foedus.core.runtime import Runtime, run_graphs
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.async_server import AsyncServerPod, VersionRecord
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import LinkMeter, client_graph, secure_plan, server_graph
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


@topologies.register("async")
class Asynchronous(Topology):
    """FedBuff (see :class:`~foedus.roles.async_server.AsyncServerPod`): ``buffer_size``
    updates per new version (default: half the clients), ``max_staleness``, ``server_lr``, and
    ``versions`` (default: the job's ``rounds``). Actors: ``server`` and the client ids."""

    def __init__(self, buffer_size: int | None = None, max_staleness: int = 10,
                 server_lr: float = 1.0, versions: int | None = None) -> None:
        try:
            self.buffer_size = None if buffer_size is None else whole_number(
                "buffer_size", buffer_size, minimum=1)
            self.max_staleness = whole_number("max_staleness", max_staleness, minimum=0)
            self.server_lr = positive_number("server_lr", server_lr)
            if not math.isfinite(self.server_lr):  # every version would be NaN
                raise ConfigError(f"server_lr: expected a finite positive number, got "
                                  f"{server_lr!r}")
            self.versions = None if versions is None else whole_number(
                "versions", versions, minimum=1)
        except ConfigError as exc:
            raise ConfigError(f"params.{exc}") from exc

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        self.refuse_aggregator(spec, "applies buffered updates itself (FedBuff)")
        pipeline = pipeline_of(spec)
        secure_plan(spec, pipeline, self.name)  # refuses secure sum: it needs centralized
        self.refuse_server_halves(spec, pipeline, "the asynchronous server")
        if self.buffer_size is not None and self.buffer_size > spec.clients.count:
            raise ConfigError(f"topology.params.buffer_size: {self.buffer_size} updates per "
                              f"version can never arrive from {spec.clients.count} clients")
        self.refuse_unused(spec, "the server applies every buffer_size updates",
                           "clients.min_clients", "clients.per_round")

    def rounds(self, spec: JobSpec) -> int:
        return self.versions or spec.rounds

    def actors(self, spec: JobSpec) -> list[str]:
        return ["server", *client_ids(spec)]

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        spec = job.spec
        server = AsyncServerPod(
            job_id=spec.job_id, initial_params=job.initial_params(),
            versions=self.rounds(spec),
            buffer_size=self.buffer_size or max(1, spec.clients.count // 2),
            max_staleness=self.max_staleness, server_lr=self.server_lr,
            # a version may take a round's time: waiting longer for one that cannot come
            # (too few clients left to fill the buffer) would only delay the same end
            evaluate=job.evaluate, timeout=spec.round_timeout * self.rounds(spec),
            version_timeout=spec.round_timeout, participants=client_ids(spec),
        )
        history: list[RoundRecord] = []
        refused: Counter[str] = Counter()  # the server's refusals up to the previous version
        runtimes: dict[str, Runtime] = {}

        def on_version(version: VersionRecord) -> None:
            before = server.history[-2].elapsed_s if len(server.history) > 1 else 0.0
            record = as_round(version, before)
            record.rejected = dict(server.rejections - refused)
            refused.update(record.rejected)
            if meter is not None:
                record.bytes_in, record.bytes_out = meter.delta()
            history.append(record)
            job.report_round(record)

        server.admission.max_examples = spec.clients.max_examples
        server.round_listeners.append(on_version)
        meter: LinkMeter | None = None
        if server.name in actors:
            graph = server_graph(server, transport_for(server.name))
            runtimes[server.name] = Runtime(graph)
            meter = LinkMeter(graph)
        for i, cid in enumerate(client_ids(spec)):
            if cid in actors:
                client = job.make_client(i, AsyncClientPod)
                runtimes[cid] = Runtime(client_graph(
                    client, transport_for(cid), spec.job_id, filters=job.client_filters()))
        here = server.name in runtimes
        return Assembly(
            runtimes, server.name if here else None, history=lambda: list(history),
            params=lambda: server.params if here else None,
            records=lambda: {a: [r.to_dict() for r in server.history] if a == server.name
                             else [] for a in runtimes},
            stop_reason=lambda: server.stop_reason if here else None,
        )


def as_round(version: VersionRecord, previous_elapsed: float) -> RoundRecord:
    """A FedBuff version as one of the job's rounds: the updates it applied, its metrics, and
    the time since the version before."""
    return RoundRecord(version.version, accepted=version.updates,
                       duration_s=version.elapsed_s - previous_elapsed,
                       metrics=dict(version.metrics))
