"""Turns a validated :class:`JobSpec` into the ingredients every topology is built from.

This is the one place that knows how job-file names map to objects (data, model, aggregator,
pipeline stages, MLOps, checkpoints); everything it builds is an ordinary public class, so a
Python user can do the same by hand. It knows nothing of topologies: a topology (see
:mod:`foedus.config.topology`) takes a :class:`JobParts` and wires its actors from it, and the
simulation engine does the same with virtual clients, so a job file means the same thing
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foedus.aggregate.base import Aggregator, aggregators
from foedus.aggregate.fedavg import FedAvg
from foedus.config.spec import JobSpec, Plugin
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter, RoundPlan, Stage, stages
from foedus.core.params import Params
from foedus.core.registry import Registry
from foedus.data.datasets import Dataset, DataSpec
from foedus.data.shares import load_job_data
from foedus.models.base import ModelAdapter, build_model
from foedus.privacy.order import check_stages
from foedus.roles.client import ClientPod, protections_of
from foedus.roles.server import Evaluator, RoundRecord, ServerPod
from foedus.transport.base import Transport, transports

if TYPE_CHECKING:
    from foedus.mlops.session import MlopsSession
    from foedus.roles.checkpoint import Checkpointer

RoundListener = Callable[[RoundRecord], None]


def create(registry: Registry[Any], plugin: Plugin, key: str, **fixed: Any) -> Any:
    """Create a plugin, prefixing any error with the job-file key it came from."""
    try:
        return registry.create(plugin.type, **fixed, **plugin.params)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def client_id(index: int) -> str:
    return f"client-{index:03d}"


def client_ids(spec: JobSpec) -> list[str]:
    """Every client id of ``spec``'s job, in index order."""
    return [client_id(i) for i in range(spec.clients.count)]


def pipeline_of(spec: JobSpec) -> list[Stage]:
    """The job's pipeline stages, checked for an order that defeats privacy or secure sum.
    Cheap (no data, no model): topologies call it in their load-time checks."""
    pipeline: list[Stage] = [
        create(stages, p, f"pipeline[{i}]") for i, p in enumerate(spec.pipeline)
    ]
    check_stages(pipeline)  # e.g. noise before clipping, or a tag nobody undoes: refused now
    if not pipeline:  # nothing to check: look no aggregator up
        return pipeline
    plan = round_plan(spec)
    for i, stage in enumerate(pipeline):  # e.g. central DP's noise split over more updates
        try:
            stage.check_round_plan(plan)
        except ConfigError as exc:
            raise ConfigError(f"pipeline[{i}]: {exc}") from exc
    return pipeline


def round_plan(spec: JobSpec) -> RoundPlan:
    """What a round of the job's server aggregates. At least ``clients.min_clients`` updates,
    else every sampled client's, else every client's (as :class:`ServerPod` defaults its
    ``min_clients``); at most the sampled clients', else all; with the job's aggregator."""
    clients = spec.clients
    most, most_key = ((clients.per_round, "clients.per_round") if clients.per_round is not None
                      else (clients.count, "clients.count"))
    fewest, fewest_key = ((clients.min_clients, "clients.min_clients")
                          if clients.min_clients is not None else (most, most_key))

    def on_the_mean(name: str) -> bool:
        rule = aggregators.get(name)  # the class: nothing is built
        return isinstance(rule, type) and issubclass(rule, FedAvg)

    return RoundPlan(
        fewest, fewest_key, most, most_key, aggregator=spec.aggregator.type,
        aggregates_mean=on_the_mean(spec.aggregator.type),
        update_kind=getattr(aggregators.get(spec.aggregator.type), "update_kind", "parameters"),
        mean_aggregators=lambda: [n for n in aggregators.names() if on_the_mean(n)])


@dataclass
class JobParts:
    """Everything a job is made of, before any transport is opened or any actor built.

    ``round_listeners`` are called with every :class:`RoundRecord` of the job, whatever the
    topology (progress bars, the CLI's summary); the server built by :meth:`make_server` also
    calls them, after the pipeline's and MLOps' own hooks.
    """

    spec: JobSpec
    data_spec: DataSpec
    shares: Sequence[Dataset]
    test: Dataset  # empty, and nobody evaluates, with per-client files and no server_options
    server_evaluates: bool
    pipeline: list[Stage]
    mlops: MlopsSession | None = None
    round_listeners: list[RoundListener] = field(default_factory=list)
    #: False when the topology trains a model of its own (``Topology.trains_own_model``): the
    #: job file's model is then never built, and the job's held-out data evaluates nothing here
    job_model: bool = True
    _server: ServerPod | None = field(default=None, repr=False)
    _evaluator: ModelAdapter | None = field(default=None, repr=False)

    def finish(self, params: Params | None, failed: bool = False) -> dict[str, Any]:
        """Close the MLOps integrations; returns what the job result should report of them."""
        if self.mlops is None:
            return {}
        registered = self.mlops.finish(None if failed else params, failed=failed)
        return {"mlflow_model_version": registered.version} if registered else {}

    def make_model(self) -> ModelAdapter:
        return make_model(self.spec, self.data_spec)

    def initial_params(self) -> dict[str, Any]:
        """The job's initial global model (the same on every process: seeded)."""
        return self.evaluator().get_params()

    def evaluator(self) -> ModelAdapter:
        if self._evaluator is None:
            self._evaluator = self.make_model()
        return self._evaluator

    @property
    def evaluate(self) -> Evaluator | None:
        """Test metrics of a model on the job's held-out data, or ``None`` without any."""
        if not self.server_evaluates or not self.job_model:
            return None

        def evaluate(params: Params) -> dict[str, float]:
            model = self.evaluator()
            model.set_params(params)
            return model.evaluate(self.test)

        return evaluate

    def make_aggregator(self) -> Aggregator:
        """A fresh aggregator as the job file names it (edges each need their own)."""
        return create(aggregators, self.spec.aggregator, "aggregator")  # type: ignore[no-any-return]

    def make_client(self, index: int, cls: type[ClientPod] = ClientPod,
                    server: str = "server") -> ClientPod:
        """Client ``index`` on its share (read on first access with per-client files): it
        provides the protections its pipeline applies (and refuses to send when a broadcast
        requires others), and checks broadcasts of ``server`` when a stage signs them."""
        return cls(client_id=client_id(index), model=self.make_model(), data=self.shares[index],
                   epochs=self.spec.clients.epochs, seed=self.spec.seed,
                   provides=protections_of(self.pipeline),
                   verify_broadcast=next((v for stage in self.pipeline
                                          if (v := stage.broadcast_verifier(server))), None))

    def client_filters(self) -> list[Filter]:
        """A fresh set of client-side filters (they may keep per-client state)."""
        return _unique_names([f for s in self.pipeline if (f := s.client())])

    def server_filters(self) -> list[Filter]:
        return _unique_names([f for s in reversed(self.pipeline) if (f := s.server())])

    def make_server(self, cls: type[ServerPod] = ServerPod, **overrides: Any) -> ServerPod:
        """The job's server: its aggregator, evaluation, checkpoints, the pipeline stages' round
        hooks (e.g. the privacy budget), MLOps and the job's round listeners, all attached.

        ``overrides`` change what differs by topology (e.g. a tree's root expects its edges,
        not the clients). One server per job: a second call returns the first.
        """
        if self._server is not None:
            return self._server
        spec = self.spec
        checkpointer: Checkpointer | None = self.mlops.checkpointer() if self.mlops else None
        if checkpointer is None and spec.checkpoint_dir:
            from foedus.roles.checkpoint import Checkpointer  # imported by jobs that checkpoint

            checkpointer = Checkpointer(spec.checkpoint_dir, spec.job_id)
        options: dict[str, Any] = {
            "job_id": spec.job_id, "initial_params": self.initial_params(),
            "aggregator": self.make_aggregator(), "rounds": spec.rounds,
            "expected_clients": spec.clients.count, "min_clients": spec.clients.min_clients,
            "round_timeout": spec.round_timeout, "evaluate": self.evaluate,
            "checkpointer": checkpointer, "participants": client_ids(spec),
            "clients_per_round": spec.clients.per_round, "seed": spec.seed,
        }
        server = cls(**(options | overrides))
        for i, stage in enumerate(self.pipeline):  # stages first: listeners see e.g. epsilon
            server.round_guards.append(stage.before_round)
            server.round_listeners.append(stage.after_round)
            server.broadcast_meta.append(stage.model_meta)
            server.state_hooks[f"pipeline[{i}]:{spec.pipeline[i].type}"] = (
                stage.state, stage.restore
            )
        server.collector.admission.max_examples = spec.clients.max_examples  # weight poisoning
        server.required_protections = protections_of(self.pipeline)  # clients fail closed
        server.broadcast_signer = next(
            (s for stage in self.pipeline if (s := stage.broadcast_signer(server.name))), None)
        if self.mlops is not None:
            self.mlops.attach(server)
        server.round_listeners.append(self.report_round)
        self._server = server
        return server

    def report_round(self, record: RoundRecord) -> None:
        """Hand one of the job's rounds to every round listener."""
        for listener in self.round_listeners:
            listener(record)


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
    spec: JobSpec, *, clients: Collection[int] | None = None, server_data: bool = True,
    job_model: bool = True,
) -> JobParts:
    """Load data, partition it, and build the pipeline and (on demand) the server.

    ``clients`` (default all) and ``server_data`` say whose data this process needs up front;
    with per-client files (``partition: files``) a client process reads only its own file and
    a server process none of the clients'. Without ``server_data`` (a process that runs no
    server) the job's MLOps integrations are not started either. Without ``job_model`` (a
    topology that trains its own model, ``Topology.trains_own_model``) the job file's model is
    not built nor checked against the aggregator and the data: the default classifier would
    refuse a regression dataset the topology's own model trains on.
    """
    data = load_job_data(
        spec.data, client_ids(spec), spec.seed, clients=clients, server_data=server_data,
    )
    pipeline = pipeline_of(spec)
    mlops = None
    if spec.mlops and server_data:  # MLOps belong to the server: a client process starts none
        # (two clients on one host would otherwise fight over the Prometheus port)
        from foedus.mlops.session import MlopsSession

        mlops = MlopsSession(spec.mlops, job_id=spec.job_id, job_params=spec,
                             data_spec=data.spec)
    parts = JobParts(spec, data.spec, data.shares, data.test, data.server_evaluates, pipeline,
                     mlops, job_model=job_model)
    if job_model:
        check_pairing(parts.evaluator(), parts.make_aggregator(), spec)
    return parts


def check_pairing(model: ModelAdapter, aggregator: Aggregator, spec: JobSpec) -> None:
    """Refuse a model whose updates the aggregator cannot combine (a forest's histograms
    averaged as parameters never grow the forest), naming the aggregators that can."""
    if model.update_kind == aggregator.update_kind:
        return
    fitting = [name for name in aggregators.names()
               if getattr(aggregators.get(name), "update_kind", "parameters") == model.update_kind]
    raise ConfigError(
        f"aggregator: {spec.aggregator.type!r} combines {aggregator.update_kind}, but model "
        f"{spec.model.type!r} sends {model.update_kind}; use "
        f"{' or '.join(fitting) or 'an aggregator for them'}")


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
        transport: Transport = create(transports, plugin, "transport")
        self.opened.append(transport)
        return transport

    async def close(self) -> None:
        for t in self.opened:
            await t.close()


def fill_actor(value: Any, actor: str) -> Any:
    """Replace ``{actor}`` in every string of a transport's parameters with the actor's id."""
    if isinstance(value, str):
        return value.replace("{actor}", actor)
    if isinstance(value, dict):
        return {k: fill_actor(v, actor) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_actor(v, actor) for v in value]
    return value
