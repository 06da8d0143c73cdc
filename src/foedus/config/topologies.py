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

``swarm`` takes ``neighbors``, ``mode`` (gossip | leader), ``mixing_rounds``; ``async`` takes
``buffer_size``, ``max_staleness``, ``server_lr`` and ``versions`` (default: ``rounds``). Each
topology runs every actor in this process on the job's transport (one connection per actor for a
networked transport).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from foedus.aggregate.base import aggregators
from foedus.config.runner import JobParts, build_parts, client_id, fill_actor, make_model
from foedus.config.spec import JobSpec, Plugin
from foedus.core.errors import ConfigError
from foedus.core.params import Params
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.async_server import AsyncServerPod
from foedus.roles.client import ClientPod
from foedus.roles.peer import MODES, PeerPod
from foedus.roles.server import ServerPod
from foedus.topology.asynchronous import run_asynchronous
from foedus.topology.centralized import run_centralized
from foedus.topology.hierarchical import check_tree, parse_tree, run_hierarchical
from foedus.topology.swarm import run_swarm
from foedus.transport.base import Transport, transports

TOPOLOGIES = ("centralized", "hierarchical", "swarm", "async")
_PARAMS = {
    "centralized": (),
    "hierarchical": ("tree",),
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


async def run_topology_job(spec: JobSpec) -> TopologyResult:
    """Run a job whose ``topology`` is hierarchical, swarm or async, every actor in-process."""
    topology = TopologySpec.of(spec.topology)
    began = time.perf_counter()
    parts = build_parts(spec)
    opened: list[Transport] = []

    def transport_for(actor: str) -> Transport:
        if opened and opened[0].shared:
            return opened[0]
        made: Transport = transports.create(
            spec.transport.type, **fill_actor(spec.transport.params, actor)
        )
        opened.append(made)
        return made

    try:
        params, records = await _RUNNERS[topology.type](parts, topology.params, transport_for)
    finally:
        for t in opened:
            await t.close()
    evaluator = make_model(spec, parts.data_spec)
    evaluator.set_params(params)
    return TopologyResult(
        spec.job_id, topology.type, dict(params), evaluator.evaluate(parts.test), records,
        time.perf_counter() - began,
    )


Runner = Any


def _clients(parts: JobParts, cls: type[ClientPod] = ClientPod) -> list[ClientPod]:
    return [
        cls(client_id=client_id(i), model=parts.make_model(), data=share,
            epochs=parts.spec.clients.epochs, seed=parts.spec.seed)
        for i, share in enumerate(parts.shares)
    ]


async def _centralized(parts: JobParts, _: dict[str, Any], transport_for: Any) -> Any:
    clients = [(c, transport_for(c.client_id), parts.client_filters()) for c in _clients(parts)]
    history = await run_centralized(parts.server, transport_for(parts.server.name), clients,
                                    server_filters=parts.server_filters())
    return parts.server.params, [r.to_dict() for r in history]


async def _hierarchical(parts: JobParts, params: dict[str, Any], transport_for: Any) -> Any:
    spec = parts.spec
    tree = parse_tree(params["tree"])
    clients = {c.client_id: (c, parts.client_filters()) for c in _clients(parts)}
    check_tree(tree, list(clients))
    if parts.server_filters():
        raise ConfigError("pipeline: hierarchical jobs do not support server-side filters yet "
                          "(edges would have to decode them)")
    server = ServerPod(
        job_id=spec.job_id, initial_params=parts.server.params,
        aggregator=aggregators.create(spec.aggregator.type, **spec.aggregator.params),
        rounds=spec.rounds, expected_clients=len(tree), round_timeout=spec.round_timeout,
        evaluate=parts.server.evaluate,
    )
    history = await run_hierarchical(
        server, tree, clients, transport_for,  # type: ignore[arg-type]
        aggregator=lambda: aggregators.create(spec.aggregator.type, **spec.aggregator.params),
    )
    return server.params, [r.to_dict() for r in history]


async def _swarm(parts: JobParts, params: dict[str, Any], transport_for: Any) -> Any:
    spec = parts.spec
    peers = [
        PeerPod(job_id=spec.job_id, peer_id=client_id(i), model=parts.make_model(), data=share,
                rounds=spec.rounds, expected_peers=len(parts.shares),
                epochs=spec.clients.epochs, round_timeout=spec.round_timeout,
                mode=params.get("mode", "gossip"), neighbors=params.get("neighbors"),
                mixing_rounds=params.get("mixing_rounds", 0), seed=spec.seed)
        for i, share in enumerate(parts.shares)
    ]
    histories = await run_swarm(peers, transport_for)
    final: Params = peers[0].params
    return final, [r.to_dict() | {"peer": p} for p, h in histories.items() for r in h]


async def _async(parts: JobParts, params: dict[str, Any], transport_for: Any) -> Any:
    spec = parts.spec
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
    clients = [(c, transport_for(c.client_id), parts.client_filters())
               for c in _clients(parts, AsyncClientPod)]
    history = await run_asynchronous(server, transport_for(server.name), clients)
    return server.params, [r.to_dict() for r in history]


_RUNNERS: dict[str, Runner] = {
    "centralized": _centralized, "hierarchical": _hierarchical, "swarm": _swarm,
    "async": _async,
}
