"""Graph recipes for a centralized job whose updates are secure-summed
(:mod:`foedus.privacy.secagg_pods`): the server's and a client's graph, an in-process runner, and
:class:`SecureJob`, the plan the job runner follows when a pipeline holds ``secure-sum``.

Kept apart from the protocol pods so that ``privacy`` never imports ``topology`` (which imports
``privacy.order``, which needs the secure-sum stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foedus.aggregate.base import aggregators
from foedus.aggregate.fedavg import FedAvg
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter, Stage
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.runtime import Runtime, run_graphs
from foedus.privacy.secagg_pods import (
    SecAggClientPod,
    SecAggServerPod,
    SecureSumSettings,
    SecureSumStage,
    masking_filters,
    secagg_topic,
)
from foedus.roles.client import ClientPod
from foedus.roles.secure_server import SecureServerPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.topology.centralized import topics, updates_link
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink


def secure_server_graph(server: ServerPod, secagg: SecAggServerPod, transport: Transport, *,
                        filters: Sequence[Filter] = ()) -> Graph:
    """The server's graph with the secure-sum pod in front of the server pod."""
    t = topics(server.job_id)
    downlink = updates_link(server, transport)
    uplink = Uplink(transport, t.model, retain=True, name="model_out")
    secagg_out = Uplink(transport, secagg_topic(server.job_id), name="secagg_out")
    graph = Graph(f"{server.job_id}/server").add(downlink, secagg, server, uplink, secagg_out)
    # lossless decoders only; check_filters refuses the rest
    graph.pipe("updates_in.out", filters, f"{secagg.name}.in")
    graph.connect(f"{secagg.name}.out", f"{server.name}.update")
    graph.connect(f"{secagg.name}.down", "secagg_out.in")
    graph.connect(f"{server.name}.model", "model_out.in")
    server.round_listeners.insert(0, lambda record: _count_refusals(record, secagg))
    if secagg.open_round is None:  # only the round the server opened may start a new sum
        secagg.open_round = lambda: None if server.collector.tally is None \
            else server.collector.tally.round
    return graph


def _count_refusals(record: RoundRecord, secagg: SecAggServerPod) -> None:
    """The protocol messages the secure-sum pod refused during the round go into its record's
    ``rejected``, beside the server's own refusals."""
    for reason, count in secagg.take_pending().items():
        record.rejected[reason] = record.rejected.get(reason, 0) + count


def secure_client_graph(client: ClientPod, secagg: SecAggClientPod, transport: Transport,
                        job_id: str, *, filters: Sequence[Filter] = ()) -> Graph:
    """A client's graph: ``filters`` (e.g. clipping) run before masking."""
    t = topics(job_id)

    def for_me(msg: Message) -> bool:
        return msg.header.recipient in (None, client.client_id)

    model_in = Downlink(transport, t.model, job_id=job_id, accept=for_me, name="model_in")
    secagg_in = Downlink(transport, secagg_topic(job_id), job_id=job_id, accept=for_me,
                         name="secagg_in")
    uplink = Uplink(transport, t.updates, name="update_out")
    graph = Graph(f"{job_id}/{client.client_id}").add(model_in, secagg_in, client, secagg,
                                                      uplink)
    graph.connect("model_in.out", f"{client.name}.model")
    graph.pipe(f"{client.name}.update", filters, f"{secagg.name}.in", model="model_in.out")
    graph.connect("secagg_in.out", f"{secagg.name}.down")
    graph.connect(f"{secagg.name}.out", "update_out.in")
    return graph


async def run_secure_aggregation_job(
    server: SecureServerPod, server_transport: Transport,
    clients: Sequence[tuple[ClientPod, Transport] | tuple[ClientPod, Transport, SecAggClientPod]],
    settings: SecureSumSettings, *, client_stages: Sequence[Stage] = (), queue_size: int = 16,
) -> list[RoundRecord]:
    """Run a centralized job whose updates are secure-summed; every actor its own runtime.

    ``server.participants`` must list every client (no client sampling). ``client_stages``
    (e.g. ``ClipStage``) are checked with :func:`foedus.privacy.order.check_pipeline` and run
    before masking as :func:`masking_filters` builds them (a stage whose server half does more
    than verify is refused: it could only see the sum). A client tuple may carry its own
    :class:`SecAggClientPod` (tests use this).
    """
    from foedus.privacy.order import check_pipeline

    if server.participants is None or server.clients_per_round is not None:
        raise ConfigError("secure aggregation needs the server's full participant list and no "
                          "client sampling (clients_per_round)")
    check_pipeline([*client_stages, SecureSumStage(settings)])
    masking_filters(client_stages)  # refuses a server half other than clip's check
    participants = server.participants
    secagg = SecAggServerPod(job_id=server.job_id, template=server.params,
                             participants=participants, settings=settings,
                             name=server.secagg_sender)
    runtimes = []
    for entry in clients:
        client, transport = entry[0], entry[1]
        pod = entry[2] if len(entry) == 3 else SecAggClientPod(  # type: ignore[misc]
            client_id=client.client_id, participants=participants, settings=settings)
        filters = masking_filters(client_stages)
        runtimes.append(Runtime(secure_client_graph(client, pod, transport, server.job_id,
                                                    filters=filters), queue_size=queue_size))
    server_runtime = Runtime(secure_server_graph(server, secagg, server_transport),
                             queue_size=queue_size)
    await run_graphs(server_runtime, *runtimes)
    return server.history


@dataclass
class SecureJob:
    """How the job runner builds a job whose pipeline holds ``secure-sum``: the graphs of
    :func:`secure_server_graph` and :func:`secure_client_graph` instead of the plain ones."""

    settings: SecureSumSettings
    participants: list[str]
    before: list[Stage]  # the pipeline stages ahead of the secure sum

    @classmethod
    def of(cls, pipeline: Sequence[Stage], *, participants: Sequence[str],
           clients_per_round: int | None, topology: str,
           aggregator: str = "fedavg") -> SecureJob | None:
        """The plan for ``pipeline``, or ``None`` without a secure sum; refuses what cannot
        work (call after :func:`foedus.privacy.order.check_pipeline`)."""
        at = [i for i, s in enumerate(pipeline) if isinstance(s, SecureSumStage)]
        if not at:
            return None
        i = at[0]
        label = f"pipeline[{i}] (secure-sum)"
        rule = aggregators.get(aggregator)
        if not (isinstance(rule, type) and issubclass(rule, FedAvg)):
            # the server sees one summed update: only a rule built on the mean stays exact
            raise ConfigError(f"{label}: the server sees only the sum, so the aggregator must "
                              f"be FedAvg or a server optimiser built on it, not {aggregator!r}")
        if topology != "centralized":
            raise ConfigError(f"{label}: secure sum needs topology centralized, not {topology!r}")
        if clients_per_round is not None:
            raise ConfigError(f"{label}: secure sum needs every client each round; remove "
                              "clients.per_round")
        if len(pipeline) > i + 1:
            raise ConfigError(f"{label}: stages after secure-sum are not supported in a job "
                              f"file (pipeline[{i + 1}] follows it); remove them")
        stage = pipeline[i]
        assert isinstance(stage, SecureSumStage)
        try:
            settings = stage.for_clients(len(participants))
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from exc
        before = list(pipeline[:i])
        masking_filters(before)  # refuse a server half now, before anything runs
        return cls(settings, list(participants), before)

    def server_graph(self, server: ServerPod, transport: Transport) -> Graph:
        if not isinstance(server, SecureServerPod):
            raise ConfigError("secure sum needs a SecureServerPod")
        secagg = SecAggServerPod(job_id=server.job_id, template=server.params,
                                 participants=self.participants, settings=self.settings,
                                 name=server.secagg_sender)
        return secure_server_graph(server, secagg, transport)

    def client_graph(self, client: ClientPod, transport: Transport, job_id: str) -> Graph:
        secagg = SecAggClientPod(client_id=client.client_id, participants=self.participants,
                                 settings=self.settings)
        return secure_client_graph(client, secagg, transport, job_id,
                                   filters=masking_filters(self.before))
