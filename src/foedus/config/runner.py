"""Turns a validated :class:`JobSpec` into pods, graphs and transports, and runs the job.

This is the one place that knows how job-file names map to objects; everything it builds is an
ordinary public class, so a Python user can do the same by hand. :func:`build_parts` is shared by
the per-actor runner here and the simulation engine (``foedus.sim``), so a job file means the
same thing in both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foedus.aggregate.base import aggregators
from foedus.config.spec import JobSpec, Plugin
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter, Stage, stages
from foedus.core.graph import Graph
from foedus.core.params import Params
from foedus.core.registry import Registry
from foedus.core.runtime import Runtime, run_graphs
from foedus.data.datasets import Dataset, DataSpec
from foedus.data.shares import load_job_data
from foedus.models.base import ModelAdapter, build_model
from foedus.plugins import load_plugins
from foedus.privacy.order import check_filters, check_pipeline
from foedus.privacy.secagg_pods import SecureJob, SecureServerPod
from foedus.roles.checkpoint import Checkpointer
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.topology.centralized import client_graph, server_graph
from foedus.transport.base import Transport, transports

if TYPE_CHECKING:
    from foedus.mlops.session import MlopsSession

RoundListener = Callable[[RoundRecord], None]


@dataclass
class JobResult:
    """The outcome of a job: its rounds and the final global model's metrics."""

    job_id: str
    clients: int
    history: list[RoundRecord]
    params: dict[str, Any]
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: the final model's metrics when the topology keeps no server round history (swarm, async)
    metrics: dict[str, float] | None = None

    @property
    def final_metrics(self) -> dict[str, float]:
        if self.metrics is not None:
            return self.metrics
        return self.history[-1].metrics if self.history else {}

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary printed by ``--json``."""
        return {
            "job_id": self.job_id,
            "rounds": len(self.history) if self.history else None,
            "clients": self.clients,
            "final_accuracy": self.final_metrics.get("accuracy"),
            "final_loss": self.final_metrics.get("loss"),
            "final_metrics": dict(self.final_metrics),  # all of them, e.g. r2 for regression
            "duration_s": round(self.duration_s, 3),
            "history": [r.to_dict() for r in self.history],
            **self.extra,
        }


def _create(registry: Registry[Any], plugin: Plugin, key: str, **fixed: Any) -> Any:
    """Create a plugin, prefixing any error with the job-file key it came from."""
    try:
        return registry.create(plugin.type, **fixed, **plugin.params)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def client_id(index: int) -> str:
    return f"client-{index:03d}"


@dataclass
class JobParts:
    """Everything a job is made of, before any transport is opened."""

    spec: JobSpec
    data_spec: DataSpec
    shares: Sequence[Dataset]
    test: Dataset  # empty, and the server does not evaluate, with files and no server_options
    pipeline: list[Stage]
    server: ServerPod
    mlops: MlopsSession | None = None
    #: set when the pipeline holds ``secure-sum``: the graphs to build instead of the plain ones
    secure: SecureJob | None = None

    def finish(self, failed: bool = False) -> dict[str, Any]:
        """Close the MLOps integrations; returns what the job result should report of them."""
        if self.mlops is None:
            return {}
        registered = self.mlops.finish(None if failed else self.server.params, failed=failed)
        return {"mlflow_model_version": registered.version} if registered else {}

    def make_model(self) -> ModelAdapter:
        return make_model(self.spec, self.data_spec)

    def client_filters(self) -> list[Filter]:
        """A fresh set of client-side filters (they may keep per-client state)."""
        return _unique_names([f for s in self.pipeline if (f := s.client())])

    def server_filters(self) -> list[Filter]:
        return _unique_names([f for s in reversed(self.pipeline) if (f := s.server())])


def _unique_names(filters: list[Filter]) -> list[Filter]:
    """Two stages of one type in a pipeline would give two pods one name: number repeats."""
    seen: dict[str, int] = {}
    for f in filters:
        count = seen.get(f.name, 0)
        seen[f.name] = count + 1
        if count:
            f.name = f"{f.name}-{count + 1}"
    return filters


def make_model(spec: JobSpec, data_spec: DataSpec) -> ModelAdapter:
    """A fresh model adapter as the job file describes it (same initial weights every call)."""
    try:
        return build_model(spec.model.type, data_spec, spec.seed, **spec.model.params)
    except ConfigError as exc:
        raise ConfigError(f"model: {exc}") from exc


def build_parts(
    spec: JobSpec, on_round: RoundListener | None = None, *,
    clients: Collection[int] | None = None, server_data: bool = True,
) -> JobParts:
    """Load data, partition it, and build the server with its aggregator and evaluator.

    ``clients`` (default all) and ``server_data`` say whose data this process needs up front;
    with per-client files (``partition: files``) a client process reads only its own file and
    a server process none of the clients'.
    """
    load_plugins()
    data = load_job_data(
        spec.data, [client_id(i) for i in range(spec.clients.count)], spec.seed,
        clients=clients, server_data=server_data,
    )
    if not data.server_evaluates and spec.topology.type != "centralized":
        raise ConfigError(
            f"data.server_options: required with partition: files for topology "
            f"{spec.topology.type!r}, which evaluates the final model on the server's data"
        )
    shares, test, data_spec = data.shares, data.test, data.spec
    pipeline: list[Stage] = [
        _create(stages, p, f"pipeline[{i}]") for i, p in enumerate(spec.pipeline)
    ]
    check_pipeline(pipeline)  # e.g. noise before clipping is refused before anything runs
    participants = [client_id(i) for i in range(spec.clients.count)]
    secure = SecureJob.of(pipeline, participants=participants,
                          clients_per_round=spec.clients.per_round, topology=spec.topology.type,
                          aggregator=spec.aggregator.type)
    evaluator_model = make_model(spec, data_spec)
    mlops = None
    if spec.mlops:
        from foedus.mlops.session import MlopsSession

        mlops = MlopsSession(spec.mlops, job_id=spec.job_id, job_params=spec)
    checkpointer = (mlops.checkpointer() if mlops else None) or (
        Checkpointer(spec.checkpoint_dir, spec.job_id) if spec.checkpoint_dir else None
    )

    def evaluate(params: Params) -> dict[str, float]:
        evaluator_model.set_params(params)
        return evaluator_model.evaluate(test)

    server = (ServerPod if secure is None else SecureServerPod)(
        job_id=spec.job_id, initial_params=evaluator_model.get_params(),
        aggregator=_create(aggregators, spec.aggregator, "aggregator"),
        rounds=spec.rounds, expected_clients=spec.clients.count,
        min_clients=spec.clients.min_clients, round_timeout=spec.round_timeout,
        evaluate=evaluate if data.server_evaluates else None,
        checkpointer=checkpointer,
        participants=participants,
        clients_per_round=spec.clients.per_round, seed=spec.seed,
    )
    for i, stage in enumerate(pipeline):  # stages' hooks first, so listeners see e.g. epsilon
        server.round_guards.append(stage.before_round)
        server.round_listeners.append(stage.after_round)
        server.broadcast_meta.append(stage.model_meta)
        server.state_hooks[f"pipeline[{i}]:{spec.pipeline[i].type}"] = (
            stage.state, stage.restore
        )
    if mlops is not None:
        mlops.attach(server)
    if on_round is not None:
        server.round_listeners.append(on_round)
    return JobParts(spec, data_spec, shares, test, pipeline, server, mlops, secure)


class ActorTransports:
    """Opens the job's transport once per actor, as separate processes would; the in-process
    transport is one shared instance. ``{actor}`` in any string parameter becomes the actor's
    id, so each participant can use its own certificate."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.opened: list[Transport] = []

    def open(self, actor: str) -> Transport:
        if self.opened and self.opened[0].shared:
            return self.opened[0]
        plugin = Plugin(self.spec.transport.type, fill_actor(self.spec.transport.params, actor))
        transport: Transport = _create(transports, plugin, "transport")
        self.opened.append(transport)
        return transport

    async def close(self) -> None:
        for t in self.opened:
            await t.close()


def _client_pod(parts: JobParts, index: int) -> ClientPod:
    return ClientPod(
        client_id=client_id(index), model=parts.make_model(), data=parts.shares[index],
        epochs=parts.spec.clients.epochs, seed=parts.spec.seed,
    )


def _server_graph(parts: JobParts, transport: Transport) -> Graph:
    """The server's graph: the secure-sum one when the pipeline asks for it."""
    if parts.secure is not None:
        return parts.secure.server_graph(parts.server, transport)
    return server_graph(parts.server, transport, filters=parts.server_filters())


def _client_graph(parts: JobParts, client: ClientPod, transport: Transport) -> Graph:
    if parts.secure is not None:
        return parts.secure.client_graph(client, transport, parts.spec.job_id)
    return client_graph(client, transport, parts.spec.job_id, filters=parts.client_filters())


@asynccontextmanager
async def _running(parts: JobParts, links: ActorTransports) -> AsyncIterator[None]:
    """Around running a job's actors: the transports are closed whatever happens, and a
    failure closes the MLOps integrations as failed before it propagates."""
    try:
        yield
    except BaseException:
        parts.finish(failed=True)
        raise
    finally:
        await links.close()


def _result(parts: JobParts, began: float) -> JobResult:
    return JobResult(
        job_id=parts.spec.job_id, clients=parts.spec.clients.count, history=parts.server.history,
        params=parts.server.params, duration_s=time.perf_counter() - began,
        extra={"stop_reason": parts.server.stop_reason, **parts.finish()},
    )


async def run_job(spec: JobSpec, *, on_round: RoundListener | None = None) -> JobResult:
    """Run ``spec`` in this process: every actor its own graph on the configured transport."""
    if spec.topology.type != "centralized":
        from foedus.config.topologies import run_topology_job

        outcome = await run_topology_job(spec)
        return JobResult(
            job_id=spec.job_id, clients=spec.clients.count, history=[], params=outcome.params,
            duration_s=outcome.duration_s, metrics=outcome.metrics,
            extra={"topology": outcome.topology, "records": outcome.records},
        )
    began = time.perf_counter()
    parts = build_parts(spec, on_round)
    links = ActorTransports(spec)
    async with _running(parts, links):
        if parts.secure is None:  # decoders must undo the encoders in reverse order
            check_filters(parts.client_filters(), parts.server_filters())
        # clients first: each is subscribed before the server broadcasts round 1
        followers = [
            Runtime(_client_graph(parts, _client_pod(parts, i), links.open(client_id(i))))
            for i in range(len(parts.shares))
        ]
        leader = Runtime(_server_graph(parts, links.open(parts.server.name)))
        await run_graphs(leader, *followers)
    return _result(parts, began)


async def run_server(spec: JobSpec, *, on_round: RoundListener | None = None) -> JobResult:
    """Run only the server of ``spec`` (``foedus server``); clients run elsewhere."""
    began = time.perf_counter()
    parts = build_parts(spec, on_round, clients=())
    links = ActorTransports(spec)
    async with _running(parts, links):
        await run_graphs(Runtime(_server_graph(parts, links.open(parts.server.name))))
    return _result(parts, began)


async def run_client(spec: JobSpec, index: int) -> ClientPod:
    """Run only client ``index`` of ``spec`` (``foedus client``) until the server says stop.

    The client trains on share ``index`` of the job's dataset, or with ``partition: files`` on
    its own file (``{client}`` in the data options becomes its id); it reads no other data.
    """
    if not 0 <= index < spec.clients.count:
        raise ConfigError(f"client index must be between 0 and {spec.clients.count - 1}, "
                          f"got {index}")
    parts = build_parts(spec, clients=(index,), server_data=False)
    links = ActorTransports(spec)
    client = _client_pod(parts, index)
    runtime = Runtime(_client_graph(parts, client, links.open(client.client_id)))
    try:
        await run_graphs(runtime)
    finally:
        await links.close()
    return client


def run_job_sync(spec: JobSpec, *, on_round: RoundListener | None = None) -> JobResult:
    """:func:`run_job` for code that is not already inside an event loop."""
    return asyncio.run(run_job(spec, on_round=on_round))


def fill_actor(value: Any, actor: str) -> Any:
    """Replace ``{actor}`` in every string of a transport's parameters with the actor's id."""
    if isinstance(value, str):
        return value.replace("{actor}", actor)
    if isinstance(value, dict):
        return {k: fill_actor(v, actor) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_actor(v, actor) for v in value]
    return value
