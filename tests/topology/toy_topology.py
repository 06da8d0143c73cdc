"""A topology written outside the package, as a third party would: one module, one
registration. Loaded by tests through ``FOEDUS_PLUGINS=tests.topology.toy_topology``.

``toy-star`` is a hub (named ``hub``, not ``server``) and the job's clients on the centralized
topics; ``hub_timeout`` is its round deadline.
"""

from __future__ import annotations

from collections.abc import Collection

from foedus.config.parts import JobParts, client_ids
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.runtime import Runtime
from foedus.topology.centralized import client_graph, server_graph


@topologies.register("toy-star")
class ToyStar(Topology):
    leader = "hub"
    supports_server_features = True

    def __init__(self, hub_timeout: float = 30.0) -> None:
        self.hub_timeout = hub_timeout

    def actors(self, spec: JobSpec) -> list[str]:
        return ["hub", *client_ids(spec)]

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        hub = job.make_server(name="hub", round_timeout=self.hub_timeout)
        runtimes: dict[str, Runtime] = {}
        if hub.name in actors:
            runtimes[hub.name] = Runtime(server_graph(hub, transport_for(hub.name)))
        for i, cid in enumerate(client_ids(job.spec)):
            if cid in actors:
                runtimes[cid] = Runtime(client_graph(
                    job.make_client(i), transport_for(cid), job.spec.job_id))
        here = hub.name in runtimes
        return Assembly(runtimes, hub.name if here else None,
                        history=lambda: list(hub.history) if here else [],
                        params=lambda: hub.params if here else None)
