"""The topology contract: how a job's actors are named, checked and wired.

A topology is a plugin like an aggregator or a transport: a :class:`Topology` subclass
registered in :data:`topologies` under the name a job file uses (``topology: {type: swarm}``),
built with the job file's ``topology.params`` as keyword arguments. It answers three questions,
and every entry point (``foedus run``, ``server``, ``client``, ``actor``, ``sim``) asks them the
same way, so a job means the same thing whichever command runs it:

* :meth:`Topology.check`: is this job possible at all? Called when the job is loaded, before
  any data is read or any actor starts; raises a one-line :class:`ConfigError`.
* :meth:`Topology.actors`: who takes part? Actor ids, the job's leader (if any) first. Each id
  names one graph, one transport connection and, in a deployment, one process or site.
* :meth:`Topology.build`: the graphs of some of those actors, not started, together with how to
  read the job's rounds and model from them (an :class:`Assembly`).

Every topology reports its rounds as :class:`~foedus.roles.server.RoundRecord` objects to the
job's round listeners (``JobParts.round_listeners``), so progress bars, summaries and MLOps see
one shape whatever the wiring.

The contract lives here, beside the job file it reads, and the topologies themselves live in
``foedus.topology`` (one module each) and register into :data:`topologies` when plugins load.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from foedus.aggregate.base import aggregators
from foedus.core.errors import ConfigError
from foedus.core.filter import Stage
from foedus.core.params import Params
from foedus.core.registry import Registry
from foedus.core.runtime import Runtime
from foedus.roles.server import RoundRecord, ServerPod
from foedus.transport.base import Transport

if TYPE_CHECKING:
    from foedus.config.parts import JobParts
    from foedus.config.spec import JobSpec

#: the transport of one actor, by actor id (each actor gets its own connection)
TransportFor = Callable[[str], Transport]


@dataclass
class Assembly:
    """Some actors of a job, built and not started, and how to read what they did.

    ``leader`` is the actor whose end is the job's end when it runs here (the server); without
    one, the job here ends when every actor here has ended. ``history`` returns the job's round
    records as seen here (empty where no actor here keeps them, e.g. a process of clients only);
    ``params`` the job's model as seen here, or ``None``; ``records`` every actor's own per-step
    records (edge rounds, peer rounds, FedBuff versions), for diagnostics.
    """

    runtimes: dict[str, Runtime]
    leader: str | None
    history: Callable[[], list[RoundRecord]]
    params: Callable[[], Params | None]
    records: Callable[[], dict[str, list[dict[str, Any]]]] = field(default=lambda: {})
    #: why the job stopped before its last round, when it did (e.g. the privacy budget ran out)
    stop_reason: Callable[[], str | None] = field(default=lambda: None)
    #: the round of the checkpoint the job's server resumed after, when it did
    resumed_from: Callable[[], int | None] = field(default=lambda: None)
    #: why the job failed as the actors here saw it although they ran every round, when it
    #: did (swarm peers that never heard from another peer learned nothing from the
    #: federation); the process then exits 1 with this line
    failure: Callable[[], str | None] = field(default=lambda: None)


class Topology:
    """Subclass, set :attr:`name`, take the job file's ``topology.params`` as keyword arguments
    of ``__init__`` (validate them there: a wrong one is a :class:`ConfigError`), and register
    the class: ``@topologies.register("ring")``."""

    #: the actor whose end is the job's end (``None``: every actor runs to its own end)
    leader: ClassVar[str | None] = "server"
    #: the job file's ``mlops:`` and ``checkpoint_dir`` work with this topology (its leader is a
    #: :class:`~foedus.roles.server.ServerPod` built by ``JobParts.make_server``)
    supports_server_features: ClassVar[bool] = False
    #: the topology trains a model of its own (vertical FL's linear model or split network),
    #: not the job file's ``model``: no job model is built, paired with the aggregator, or
    #: checked against the dataset's task, and ``check`` should refuse a ``model`` key
    trains_own_model: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The name the topology is registered under (set by :data:`topologies`)."""
        return getattr(type(self), "registered_name", type(self).__name__.lower())

    def check(self, spec: JobSpec) -> None:
        """Refuse a job this topology cannot run, before anything is loaded or started.

        The default refuses ``mlops`` and ``checkpoint_dir`` unless
        :attr:`supports_server_features`; subclasses call ``super().check(spec)``.
        """
        if self.supports_server_features:
            return
        for key, used in (("mlops", bool(spec.mlops)), ("checkpoint_dir", spec.checkpoint_dir)):
            if used:
                raise ConfigError(f"{key}: topology {self.name} has no server that could use it; "
                                  "remove the key or use topology centralized or hierarchical")

    def refuse_unused(self, spec: JobSpec, why: str, *keys: str) -> None:
        """Refuse ``clients.*`` keys this topology would silently ignore (``why``: what it
        does instead)."""
        for key in keys:
            if getattr(spec.clients, key.removeprefix("clients.")) is not None:
                raise ConfigError(f"{key}: not used by topology {self.name} ({why}); remove it")

    def refuse_aggregator(self, spec: JobSpec, how: str) -> None:
        """Refuse an ``aggregator`` a topology that combines models its own way (``how``)
        would never run."""
        if spec.aggregator.type != "fedavg" or spec.aggregator.params:
            raise ConfigError(
                f"aggregator: topology {self.name} {how}, so {spec.aggregator.type!r} would "
                "never run; remove the aggregator key (or use topology centralized or "
                "hierarchical, whose servers and edges run it)")

    def refuse_server_halves(self, spec: JobSpec, pipeline: Sequence[Stage], who: str) -> None:
        """Refuse pipeline stages whose updates need a server-side step ``who`` cannot run."""
        for i, stage in enumerate(pipeline):
            if stage.server() is not None:
                raise ConfigError(
                    f"pipeline[{i}] ({spec.pipeline[i].type}): its updates need a server-side "
                    f"step that {who} cannot run yet; remove it or use topology centralized")

    def require_updates(self, spec: JobSpec, senders: int, where: str) -> None:
        """Refuse an aggregator that needs more updates per round than ``senders`` can ever
        send (Krum tolerating ``f`` needs ``2f+3``): every round would end without a model."""
        from foedus.config.parts import create

        need = create(aggregators, spec.aggregator, "aggregator").min_updates()
        if need > senders:
            raise ConfigError(
                f"aggregator: {spec.aggregator.type} needs at least {need} updates a round, but "
                f"there are only {senders} {where}; every round would end without a model")

    def participants(self, spec: JobSpec) -> str:
        """Who trains, as the summary says it (``10 clients``)."""
        return f"{spec.clients.count} clients"

    def rounds(self, spec: JobSpec) -> int:
        """How many rounds the job has (its progress bar's length)."""
        return spec.rounds

    def actors(self, spec: JobSpec) -> list[str]:
        """Every actor id of ``spec``'s job, the leader (if any) first."""
        raise NotImplementedError(f"{type(self).__name__} must implement actors()")

    def data_holders(self, spec: JobSpec) -> list[str]:
        """The actors that train on data of their own (clients, peers): a federation places
        each at a site that holds its data, and runs the others (servers, edge aggregators)
        itself. By default the actors that are client ids."""
        from foedus.config.parts import client_ids

        ids = set(client_ids(spec))
        return [a for a in self.actors(spec) if a in ids]

    def round_reporter(self, spec: JobSpec) -> str:
        """The data holder whose round records are the job's when no actor runs at the
        coordinator (a federation then takes them from its site): by default the first (a
        swarm's first peer, whose view ``foedus run`` shows too; a vertical job's label
        party, which it lists first)."""
        return self.data_holders(spec)[0]

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        """The graphs of ``actors`` (a subset of :meth:`actors`), nothing started.

        Open a transport only for the actors built here (``transport_for(actor_id)``); read only
        their data (``job.shares[i]`` for the clients built here). Call
        ``job.round_listeners`` with a :class:`RoundRecord` as each round of the job ends.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def check_simulation(self, spec: JobSpec) -> None:
        """Refuse, before anything is loaded, a job ``foedus sim`` cannot simulate. By default
        a topology cannot be simulated; one that can overrides this and
        :meth:`simulation_server`."""
        raise ConfigError(f"topology {self.name}: foedus sim cannot simulate it (the simulator "
                          "wires one server to virtual clients); run the job with foedus run")

    def simulation_server(self, job: JobParts) -> ServerPod:
        """The server pod ``foedus sim`` wires to its virtual clients."""
        raise ConfigError(f"topology {self.name}: foedus sim cannot simulate it")


class _TopologyRegistry(Registry[Topology]):
    """Remembers on each class the name it was registered under, for messages."""

    def register(self, name: str) -> Callable[[Callable[..., Topology]], Callable[..., Topology]]:
        inner = super().register(name)

        def decorate(factory: Callable[..., Topology]) -> Callable[..., Topology]:
            if isinstance(factory, type):
                factory.registered_name = name  # type: ignore[attr-defined]
            return inner(factory)

        return decorate


#: registered topologies, by the name a job file uses (``topology: {type: hierarchical}``)
topologies: Registry[Topology] = _TopologyRegistry("topology")


def topology_of(spec: JobSpec) -> Topology:
    """The topology ``spec`` names, built from its parameters and checked against the job.

    Errors are one line, prefixed with the job-file key they come from.
    """
    try:
        topology = topologies.create(spec.topology.type, **spec.topology.params)
    except ConfigError as exc:
        raise ConfigError(f"topology: {exc}") from exc
    topology.check(spec)
    return topology
