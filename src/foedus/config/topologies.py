"""The ``topology`` section of a job file, and how each non-centralized topology runs.

The rest of the job file means exactly what it means for a centralized job (data, model,
aggregator, pipeline, transport); ``run_job`` hands jobs whose topology is not ``centralized``
to :func:`run_topology_job`::

    topology:
      type: hierarchical            # centralized | hierarchical | swarm | async
      params:
        tree:                       # the root's children: client ids or edges
          - {edge: north, children: [client-000, client-001, client-002]}
          - {edge: south, min_children: 2, children: [client-003, client-004, client-005]}

``hierarchical`` also takes ``min_children`` (the root's quorum among its children; default:
all). ``swarm`` takes ``neighbors``, ``mode`` (gossip | leader), ``mixing_rounds``; ``async``
takes ``buffer_size``, ``max_staleness``, ``server_lr`` and ``versions`` (default: ``rounds``).

:func:`run_topology_job` runs every actor in this process on the job's transport (one connection
per actor for a networked transport). :func:`run_topology_actors` runs only some of them, so a
deployment starts each actor (or each site's group of actors) as its own process from the same
job file; :func:`topology_actors` lists the actor ids a job has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from foedus.aggregate.base import aggregators
from foedus.config.runner import (
    ActorTransports,
    JobParts,
    build_parts,
    client_id,
    make_model,
    run_job,
)
from foedus.config.spec import JobSpec, Plugin
from foedus.core.errors import ConfigError
from foedus.core.params import Params
from foedus.core.runtime import Runtime
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.async_server import AsyncServerPod
from foedus.roles.client import ClientPod
from foedus.roles.peer import MODES, PeerPod
from foedus.roles.server import ServerPod
from foedus.topology.centralized import client_graph, server_graph
from foedus.topology.hierarchical import EdgeNode, Node, parse_tree, tree_actors, walk
from foedus.topology.swarm import swarm_graph
from foedus.transport.base import Transport, transports

log = logging.getLogger("foedus.topologies")

TOPOLOGIES = ("centralized", "hierarchical", "swarm", "async")
_PARAMS = {
    "centralized": (),
    "hierarchical": ("tree", "min_children"),
    "swarm": ("neighbors", "mode", "mixing_rounds"),
    "async": ("buffer_size", "max_staleness", "server_lr", "versions"),
}


@dataclass(frozen=True)
class TopologySpec:
    type: str = "centralized"
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, plugin: Plugin) -> TopologySpec:
        """Validate a job's ``topology`` entry."""
        return cls.from_dict({"type": plugin.type, "params": plugin.params})

    @classmethod
    def from_dict(cls, raw: Any) -> TopologySpec:
        if raw is None:
            return cls()
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict):
            raise ConfigError("topology: expected a name or {type: NAME, params: {...}}")
        unknown = sorted(set(raw) - {"type", "params"})
        if unknown:
            raise ConfigError(f"topology.{unknown[0]}: unknown key; allowed: type, params")
        kind = raw.get("type", "centralized")
        if kind not in TOPOLOGIES:
            raise ConfigError(f"topology.type: got {kind!r}; allowed: {', '.join(TOPOLOGIES)}")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError("topology.params: expected a mapping")
        bad = sorted(set(params) - set(_PARAMS[kind]))
        if bad:
            allowed = ", ".join(_PARAMS[kind]) or "none"
            raise ConfigError(f"topology.params.{bad[0]}: unknown for {kind}; allowed: {allowed}")
        if kind == "hierarchical" and "tree" not in params:
            raise ConfigError("topology.params.tree: a hierarchical job needs its tree")
        root_quorum = params.get("min_children")
        if root_quorum is not None and (isinstance(root_quorum, bool)
                                        or not isinstance(root_quorum, int) or root_quorum < 1):
            raise ConfigError("topology.params.min_children: expected an integer >= 1, "
                              f"got {root_quorum!r}")
        if kind == "swarm" and params.get("mode", "gossip") not in MODES:
            raise ConfigError(f"topology.params.mode: allowed: {', '.join(MODES)}")
        return cls(kind, dict(params))


@dataclass
class TopologyResult:
    """What any topology's job produced: the final model, its test metrics, per-step records."""

    job_id: str
    topology: str
    params: dict[str, Any]
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    duration_s: float


@dataclass
class ActorsResult:
    """What some actors of a topology job did in this process.

    ``records`` holds, per actor, its per-step records: root server rounds, edge rounds, FedBuff
    versions or peer rounds (clients keep none). ``params`` is the job's model as seen here: the
    (root or FedBuff) server's if it ran here, else the first peer's for a swarm, else ``None``;
    ``metrics`` are its test metrics (``{}`` without a model).
    """

    job_id: str
    topology: str
    actors: list[str]
    records: dict[str, list[dict[str, Any]]]
    params: dict[str, Any] | None
    metrics: dict[str, float]
    duration_s: float


#: ``on_record(actor, record)``: a server's round, a FedBuff version or a peer's round, as it ends
RecordListener = Callable[[str, dict[str, Any]], None]
TransportFor = Callable[[str], Transport]


@dataclass
class _Built:
    """A topology job built for some of its actors: their runtimes and how to read results."""

    runtimes: dict[str, Runtime]
    leader: str | None  # the actor whose end is the job's end, when it runs here
    records: Callable[[], dict[str, list[dict[str, Any]]]]
    params: Callable[[], Params | None]


Builder = Callable[
    [JobParts, dict[str, Any], TransportFor, Collection[str], RecordListener | None], _Built
]


def topology_actors(spec: JobSpec) -> list[str]:
    """The actor ids of a hierarchical, swarm or async job, the server first: ``server``, edge
    names and client ids top down (hierarchical); ``server`` and client ids (async); client ids
    acting as peers (swarm). These are the names :func:`run_topology_actors` accepts."""
    topology = TopologySpec.of(spec.topology)
    clients = [client_id(i) for i in range(spec.clients.count)]
    if topology.type == "hierarchical":
        tree = parse_tree(topology.params["tree"])
        ids = ["server"] + [n.name if isinstance(n, EdgeNode) else n for n, _ in walk(tree)]
        clashes = sorted({i for i in ids if ids.count(i) > 1})
        if clashes:  # an actor id names one process and one connection: it must be unique
            raise ConfigError(f"topology.params.tree: actor ids used twice (edges, clients, "
                              f"server): {clashes}")
        return ids
    if topology.type == "async":
        return ["server", *clients]
    if topology.type == "swarm":
        return clients
    raise ConfigError(f"topology.type: {topology.type} jobs run their actors with "
                      "`foedus server` and `foedus client --index N` (in Python: "
                      "foedus.config.runner.run_server / run_client)")


async def run_topology_job(spec: JobSpec) -> TopologyResult:
    """Run a job whose ``topology`` is hierarchical, swarm or async, every actor in-process."""
    topology = TopologySpec.of(spec.topology)
    if topology.type == "centralized":  # the ordinary runner; its rounds as the records
        job = await run_job(spec)
        return TopologyResult(
            spec.job_id, "centralized", dict(job.params), job.final_metrics,
            [r.to_dict() for r in job.history], job.duration_s,
        )
    result = await run_topology_actors(spec, topology_actors(spec))
    records = [
        r | ({"peer": actor} if topology.type == "swarm" else {})
        for actor, recs in result.records.items()
        if topology.type == "swarm" or actor == "server"
        for r in recs
    ]
    return TopologyResult(spec.job_id, topology.type, result.params or {}, result.metrics,
                          records, result.duration_s)


async def run_topology_actors(
    spec: JobSpec, actors: Sequence[str], *, on_ready: Callable[[], None] | None = None,
    on_record: RecordListener | None = None, timeout: float | None = None, grace: float = 10.0,
) -> ActorsResult:
    """Run only ``actors`` of a hierarchical, swarm or async job in this process.

    Every process of a deployment loads the same job file (same seed, so the same data split and
    initial model) and names its own actors; they meet on the job's networked transport, each
    actor with its own connection. An edge and its clients can share a process (one site), or
    each can have its own. The call returns when the actors here are done: with the server here,
    when it finished its job (the others get ``grace`` seconds to see the stop message);
    without it, when every actor here saw the stop (or its peers' last round). ``on_ready`` is
    called once every actor here is subscribed, which is when a supervisor may start the
    server. ``timeout`` bounds the wait (``None``: none), for actors whose server may vanish.
    """
    topology = TopologySpec.of(spec.topology)
    known = topology_actors(spec)
    if not actors:
        raise ConfigError("name at least one actor to run")
    unknown = sorted(set(actors) - set(known))
    if unknown:
        raise ConfigError(f"unknown actors {unknown}; this job has {known}")
    if len(set(actors)) != len(actors):
        twice = sorted({a for a in actors if list(actors).count(a) > 1})
        raise ConfigError(f"actors named twice: {twice}")
    # loads the plugins, so the transport's class is known below; reads up front only the data
    # of the clients run here (with per-client files, others' files are not on this machine)
    here = [i for i in range(spec.clients.count) if client_id(i) in actors]
    parts = build_parts(spec, clients=here)
    factory = transports.get(spec.transport.type)
    if getattr(factory, "shared", False) and set(actors) != set(known):
        raise ConfigError(
            f"transport: {spec.transport.type!r} exists only inside one process, so the actors "
            "run elsewhere could never be reached; use a networked transport (kafka, mqtt, "
            "grpc) to split a job across processes"
        )
    began = time.perf_counter()
    links = ActorTransports(spec)
    try:
        built = _BUILDERS[topology.type](parts, topology.params, links.open, set(actors),
                                         on_record)
        await asyncio.wait_for(_run(built, on_ready, grace), timeout)
    finally:
        await links.close()
    params = built.params()
    metrics: dict[str, float] = {}
    if params is not None:
        evaluator = make_model(spec, parts.data_spec)
        evaluator.set_params(params)
        metrics = evaluator.evaluate(parts.test)
    return ActorsResult(
        spec.job_id, topology.type, list(actors), built.records(),
        None if params is None else dict(params), metrics, time.perf_counter() - began,
    )


async def _run(built: _Built, on_ready: Callable[[], None] | None, grace: float) -> None:
    """Start the followers, then the leader; as :func:`foedus.core.runtime.run_graphs`, with a
    ready hook and no leader required (a process of edges or peers has none)."""
    leader = built.runtimes.get(built.leader) if built.leader else None
    followers = [rt for actor, rt in built.runtimes.items() if actor != built.leader]
    started: list[Runtime] = []
    try:
        for rt in followers + ([leader] if leader is not None else []):
            await rt.start()
            started.append(rt)
        if on_ready is not None:
            on_ready()
        if leader is None:
            await asyncio.gather(*(rt.wait() for rt in followers))
        else:
            await leader.wait()
            if followers:
                try:
                    await asyncio.wait_for(
                        asyncio.gather(*(rt.wait() for rt in followers)), timeout=grace)
                except TimeoutError:
                    log.warning("%d actors still running %.1fs after the server ended; "
                                "stopping them", len(followers), grace)
    finally:
        for rt in reversed(started):
            await rt.stop()
    for rt in built.runtimes.values():
        for failure in rt.stats.failures:
            if failure.wire == "run":
                raise failure


def _clients(parts: JobParts, cls: type[ClientPod] = ClientPod,
             only: Collection[str] | None = None) -> list[ClientPod]:
    # index the shares only for the clients built here: with per-client files, a share is
    # read from its file on first access, and an actor must not read other clients' files
    return [
        cls(client_id=client_id(i), model=parts.make_model(), data=parts.shares[i],
            epochs=parts.spec.clients.epochs, seed=parts.spec.seed)
        for i in range(len(parts.shares))
        if only is None or client_id(i) in only
    ]


def _hierarchical(parts: JobParts, params: dict[str, Any], transport_for: TransportFor,
                  actors: Collection[str], on_record: RecordListener | None) -> _Built:
    spec = parts.spec
    tree: tuple[Node, ...] = parse_tree(params["tree"])
    if parts.server_filters():
        raise ConfigError("pipeline: hierarchical jobs do not support server-side filters yet "
                          "(edges would have to decode them)")
    min_children = params.get("min_children")
    if min_children is not None and min_children > len(tree):
        raise ConfigError(f"topology.params.min_children: the root has only {len(tree)} "
                          f"children, got {min_children}")
    server = ServerPod(
        job_id=spec.job_id, initial_params=parts.server.params,
        aggregator=aggregators.create(spec.aggregator.type, **spec.aggregator.params),
        rounds=spec.rounds, expected_clients=len(tree), min_clients=min_children,
        round_timeout=spec.round_timeout, evaluate=parts.server.evaluate,
    )
    if on_record is not None:
        listener = on_record
        server.round_listeners.append(lambda r: listener(server.name, r.to_dict()))
    # every client id must be known to check the tree; only those run here get real models
    clients = {c.client_id: (c, parts.client_filters()) for c in _clients(parts)}
    built = tree_actors(
        server, tree, clients, transport_for, actors=actors,
        aggregator=lambda: aggregators.create(spec.aggregator.type, **spec.aggregator.params),
    )

    def records() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {a: [] for a in built.runtimes}
        if server.name in out:
            out[server.name] = [r.to_dict() for r in server.history]
        for name, edge in built.edges.items():
            out[name] = [r.to_dict() for r in edge.history]
        return out

    here = server.name in built.runtimes
    return _Built(built.runtimes, server.name if here else None, records,
                  lambda: server.params if here else None)


def _own_averaging(spec: JobSpec, how: str) -> None:
    """Refuse an ``aggregator`` that a topology averaging models its own way would ignore."""
    if spec.aggregator.type != "fedavg" or spec.aggregator.params:
        raise ConfigError(
            f"aggregator: topology {spec.topology.type} {how}, so {spec.aggregator.type!r} "
            f"would never run; remove the aggregator key (or use topology centralized or "
            f"hierarchical, whose servers and edges run it)")


def _swarm(parts: JobParts, params: dict[str, Any], transport_for: TransportFor,
           actors: Collection[str], on_record: RecordListener | None) -> _Built:
    spec = parts.spec
    _own_averaging(spec, "averages the peers' models itself (gossip or all-reduce)")
    peers = [
        PeerPod(job_id=spec.job_id, peer_id=client_id(i), model=parts.make_model(),
                data=parts.shares[i],
                rounds=spec.rounds, expected_peers=len(parts.shares),
                epochs=spec.clients.epochs, round_timeout=spec.round_timeout,
                mode=params.get("mode", "gossip"), neighbors=params.get("neighbors"),
                mixing_rounds=params.get("mixing_rounds", 0), seed=spec.seed)
        for i in range(len(parts.shares))
        if client_id(i) in actors  # the others' shares are never read (see _clients)
    ]
    if on_record is not None:
        listener = on_record
        for p in peers:
            p.round_listeners.append(lambda peer, r: listener(peer.peer_id, r.to_dict()))
    runtimes = {p.peer_id: Runtime(swarm_graph(p, transport_for(p.peer_id))) for p in peers}
    return _Built(runtimes, None,
                  lambda: {p.peer_id: [r.to_dict() for r in p.history] for p in peers},
                  lambda: peers[0].params)


def _async(parts: JobParts, params: dict[str, Any], transport_for: TransportFor,
           actors: Collection[str], on_record: RecordListener | None) -> _Built:
    spec = parts.spec
    _own_averaging(spec, "applies buffered updates itself (FedBuff)")
    if parts.server_filters():
        raise ConfigError("pipeline: async jobs do not support server-side filters yet")
    server = AsyncServerPod(
        job_id=spec.job_id, initial_params=parts.server.params,
        versions=params.get("versions", spec.rounds),
        buffer_size=params.get("buffer_size", max(1, len(parts.shares) // 2)),
        max_staleness=params.get("max_staleness", 10),
        server_lr=params.get("server_lr", 1.0), evaluate=parts.server.evaluate,
        timeout=spec.round_timeout * spec.rounds,
    )
    if on_record is not None:
        listener = on_record
        server.round_listeners.append(lambda r: listener(server.name, r.to_dict()))
    runtimes: dict[str, Runtime] = {}
    if server.name in actors:
        runtimes[server.name] = Runtime(server_graph(server, transport_for(server.name)))
    for c in _clients(parts, AsyncClientPod, only=actors):
        runtimes[c.client_id] = Runtime(client_graph(
            c, transport_for(c.client_id), spec.job_id, filters=parts.client_filters()))
    here = server.name in runtimes
    return _Built(
        runtimes, server.name if here else None,
        lambda: {a: [r.to_dict() for r in server.history] if a == server.name else []
                 for a in runtimes},
        lambda: server.params if here else None,
    )


_BUILDERS: dict[str, Builder] = {
    "hierarchical": _hierarchical, "swarm": _swarm, "async": _async,
}
