"""Runs a job, or some of its actors, whatever its topology: the one dispatch path.

``foedus run`` (:func:`run_job`), ``foedus server`` (:func:`run_server`), ``foedus client``
(:func:`run_client`) and ``foedus actor`` (:func:`run_actors`) all end in :func:`run_actors`:
load the job's topology from the registry and check it against the job, read only the data
the actors here need, let the topology build their graphs, open one transport connection per
actor, run them, and report one :class:`JobResult`, whose ``history`` holds one
:class:`~foedus.roles.server.RoundRecord` per round for every topology.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from foedus.config.parts import (
    ActorTransports,
    JobParts,
    RoundListener,
    build_parts,
    client_id,
)
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, topology_of
from foedus.core.errors import ConfigError
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.plugins import load_plugins
from foedus.roles.client import SILENCE_FACTOR, ClientPod
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import LinkMeter
from foedus.transport.base import transports
from foedus.transport.link import Uplink

log = logging.getLogger("foedus.runner")
P = TypeVar("P")
R = TypeVar("R")

__all__ = ["JobResult", "RoundListener", "build_actor_parts", "prepare", "run_actors",
           "run_assembly", "run_client", "run_job", "run_job_sync", "run_server", "run_sync"]


@dataclass
class JobResult:
    """What a job (or the actors of it run here) did: one record per round, the final model
    and its metrics, whatever the topology.

    ``history`` is empty in a process that runs no actor keeping the job's rounds (a process
    of clients only); ``params`` is then empty too. ``records`` holds each actor's own records
    (edge rounds, peer rounds, FedBuff versions) for diagnostics.
    """

    job_id: str
    clients: int
    history: list[RoundRecord]
    params: dict[str, Any]
    duration_s: float
    topology: str = "centralized"
    actors: list[str] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the final model's metrics when no round recorded any (e.g. swarm peers that do not
    #: evaluate); otherwise the last round's
    metrics: dict[str, float] | None = None
    #: why the job failed as its actors here saw it although every round ran (the topology's
    #: ``Assembly.failure``: e.g. a swarm peer that never heard from another peer)
    actors_failure: str | None = None

    @property
    def final_metrics(self) -> dict[str, float]:
        if self.history and self.history[-1].metrics:
            return self.history[-1].metrics
        return self.metrics or {}

    @property
    def near_chance(self) -> str | None:
        """A warning when the final model does no better than guessing: accuracy within two
        points of always answering the test set's commonest class, or R² at or below 0
        (no better than the mean). ``None`` when it learned, or without test metrics."""
        final = self.final_metrics
        chance = self.extra.get("chance_accuracy")
        if "accuracy" in final and chance is not None and final["accuracy"] <= chance + 0.02:
            return (f"final accuracy {final['accuracy']:.4f} is at chance level "
                    f"({chance:.4f}: always answering the commonest class)")
        if "r2" in final and final["r2"] <= 0:
            return f"final r2 {final['r2']:.4f}: no better than predicting the mean"
        return None

    @property
    def failure(self) -> str | None:
        """Why the job failed although it ran to its end, or ``None``: every round without
        quorum (or with a failed aggregation) means the job learned nothing, and so does a
        server that stopped before its first round (a round guard: a spent privacy budget),
        and so do actors whose topology says they failed (:attr:`actors_failure`)."""
        if self.actors_failure:
            return self.actors_failure
        if not self.history and self.extra.get("stop_reason"):
            return f"stopped before round 1: {self.extra['stop_reason']}"
        if self.history and all(r.status != "ok" for r in self.history):
            statuses = sorted({r.status for r in self.history})
            return (f"no round of {len(self.history)} produced a new model "
                    f"({', '.join(statuses)}): the global model is the initial one")
        return None

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary printed by ``--json``."""
        return {
            "job_id": self.job_id,
            "topology": self.topology,
            "rounds": len(self.history),
            "clients": self.clients,
            "actors": self.actors,
            "final_accuracy": self.final_metrics.get("accuracy"),
            "final_loss": self.final_metrics.get("loss"),
            "final_metrics": dict(self.final_metrics),  # all of them, e.g. r2 for regression
            "updates_accepted": sum(r.accepted for r in self.history),
            "updates_rejected": sum(sum(r.rejected.values()) for r in self.history),
            "bytes_in": sum(r.bytes_in for r in self.history),
            "bytes_out": sum(r.bytes_out for r in self.history),
            "failed": self.failure,
            "warning": self.near_chance,
            "duration_s": round(self.duration_s, 3),
            "history": [r.to_dict() for r in self.history],
            **self.extra,
        }


def prepare(spec: JobSpec) -> Topology:
    """Load the plugins and the job's topology, and check the job against it: everything that
    can be refused before data is read or an actor starts is refused here, in one line."""
    load_plugins()
    return topology_of(spec)


def build_actor_parts(spec: JobSpec, topology: Topology, actors: Sequence[str]) -> JobParts:
    """The parts :func:`run_actors` builds for ``actors``: only the data of the clients run
    here (with per-client files, the others' files are not on this machine), and the held-out
    data only where the leader runs, and the job file's model only when the topology trains
    it (not one that trains its own, as vertical FL does). A process that waits before it
    runs them (the federation's gated server) builds them while it waits and passes them in."""
    here = [i for i in range(spec.clients.count) if client_id(i) in actors]
    leader_here = topology.leader is None or topology.leader in actors
    return build_parts(spec, clients=here, server_data=leader_here,
                       job_model=not topology.trains_own_model)


#: ``on_client_round(client, answer, (received, sent))``: a client run here sent its answer
#: (update or error); the bytes its links moved since its previous answer, this one included
ClientListener = Callable[[ClientPod, Message, tuple[int, int]], None]


async def run_actors(
    spec: JobSpec, actors: Sequence[str], *, on_round: RoundListener | None = None,
    on_ready: Callable[[], None] | None = None, timeout: float | None = None,
    grace: float = 10.0, on_client_round: ClientListener | None = None,
    on_waiting: Callable[[float], None] | None = None, parts: JobParts | None = None,
    on_client_unconfirmed: Callable[[ClientPod, Message], None] | None = None,
) -> JobResult:
    """Run ``actors`` of ``spec``'s job in this process, on the job's transport.

    Every process of a deployment loads the same job file (same seed, so the same data split and
    initial model) and names its own actors; they meet on the job's networked transport, each
    actor with its own connection. The call returns when the actors here are done: with the
    job's leader (its server) here, when it finished the job (the others get ``grace`` seconds
    to see its stop message); without it, when every actor here has ended. ``on_round`` sees
    every round of the job that ends here; ``on_ready`` is called once every actor here has
    started (subscribed), which is when a supervisor may start the server elsewhere.
    ``timeout`` bounds the whole wait (``None``: no bound). Where the leader does not run,
    ``on_client_round`` sees each answer a client here sends, and ``on_waiting(seconds)`` is
    called every ``round_timeout`` while no client here has received a model yet (a server
    that is not running, or on another transport, should not mean waiting in silence); a
    client here that joined fails with :class:`~foedus.roles.client.ServerSilent` once
    :data:`~foedus.roles.client.SILENCE_FACTOR` times ``round_timeout`` pass after its answer
    with no word from the server (a server dead behind a live broker is not seen otherwise).
    ``parts``: what :func:`build_actor_parts` made for these actors ahead of time (None:
    built here). ``on_client_unconfirmed`` sees, once the actors here stopped, each answer a
    client here handed to its transport that was never confirmed sent (the actor was
    cancelled mid-publish): it may or may not have reached the server, so whoever counts
    what left (a privacy ledger) must count it.
    """
    topology = prepare(spec)
    known = topology.actors(spec)
    if not actors:
        raise ConfigError(f"name at least one actor to run; this job has {known}")
    twice = sorted({a for a in actors if list(actors).count(a) > 1})
    if twice:
        raise ConfigError(f"actors named twice: {twice}")
    unknown = sorted(set(actors) - set(known))
    if unknown:
        raise ConfigError(f"unknown actors {unknown}; this job ({topology.name}) has {known}")
    if getattr(transports.get(spec.transport.type), "shared", False) \
            and set(actors) != set(known):
        raise ConfigError(
            f"transport: {spec.transport.type!r} exists only inside one process, so the actors "
            "run elsewhere could never be reached; use a networked transport (kafka, mqtt, "
            "grpc, https) to split a job across processes")
    began = time.perf_counter()
    leader_here = topology.leader is None or topology.leader in actors
    if parts is None:
        parts = build_actor_parts(spec, topology, actors)
    if on_round is not None:
        parts.round_listeners.append(on_round)
    links = ActorTransports(spec)
    assembly: Assembly | None = None
    try:
        assembly = topology.build(parts, set(actors), links.open)
        clients = _pods(assembly, ClientPod)
        if not leader_here:  # a server elsewhere may die unseen behind a live broker
            for client in clients:
                client.silence_timeout = SILENCE_FACTOR * spec.round_timeout
        # answers are followed from hand-off to sending for either listener: the unconfirmed
        # ones are those handed off and never sent
        followed = on_client_round is not None or on_client_unconfirmed is not None
        unconfirmed = [_report_answers(rt.graph, on_client_round or _no_listener)
                       for rt in assembly.runtimes.values()] if followed else []
        watch = (asyncio.create_task(_watch_for_models(clients, spec.round_timeout, on_waiting))
                 if on_waiting is not None and clients and not leader_here else None)
        try:
            await asyncio.wait_for(run_assembly(assembly, on_ready, grace), timeout)
        finally:
            if watch is not None:
                watch.cancel()
            if on_client_unconfirmed is not None:
                for pending in unconfirmed:
                    for client, answer in pending():
                        on_client_unconfirmed(client, answer)
    except BaseException:
        parts.finish(None, failed=True)
        raise
    finally:
        await links.close()
    params = assembly.params()
    metrics: dict[str, float] | None = None
    history = assembly.history()
    if params is not None and parts.server_evaluates and not (history and history[-1].metrics):
        metrics = parts.evaluate(params) if parts.evaluate else None
    result = JobResult(
        job_id=spec.job_id, clients=spec.clients.count, history=history,
        params=dict(params) if params is not None else {},
        duration_s=time.perf_counter() - began, topology=topology.name, actors=list(actors),
        records=assembly.records(), metrics=metrics, actors_failure=assembly.failure(),
        extra={"participants": topology.participants(spec), "leader": topology.leader,
               "stop_reason": assembly.stop_reason(), "resumed_from": assembly.resumed_from(),
               "rounds_trained": _rounds_trained(assembly), "actor_bytes": _actor_bytes(assembly)},
    )
    if parts.server_evaluates and parts.data_spec.task == "classification" and len(parts.test):
        result.extra["chance_accuracy"] = chance_accuracy(parts.test.y)
    result.extra.update(parts.finish(params, failed=result.failure is not None))
    return result


def chance_accuracy(labels: np.ndarray) -> float:
    """The accuracy of always answering the commonest label: the floor a model must beat."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / counts.sum())


async def run_assembly(assembly: Assembly, on_ready: Callable[[], None] | None = None,
                       grace: float = 10.0) -> None:
    """Start every actor but the leader, then the leader (so everyone is subscribed before it
    broadcasts); wait for the leader, or for everyone without one; stop all; re-raise a driver's
    failure, so a crashed actor never looks like a finished job."""
    leader = assembly.runtimes.get(assembly.leader) if assembly.leader else None
    followers = [rt for actor, rt in assembly.runtimes.items() if actor != assembly.leader]
    started: list[Runtime] = []
    try:
        for rt in [*followers, *([leader] if leader is not None else [])]:
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
    failed = [(actor, failure) for actor, rt in assembly.runtimes.items()
              for failure in rt.stats.failures if failure.wire == "run"]
    if failed:
        # the first is raised (the caller reports it); each other actor's is said here, or it
        # would stay a WARNING nobody sees (several actors in one process lost one hub)
        for actor, failure in failed[1:]:
            log.error("actor %s also failed: %s", actor, failure)
        raise failed[0][1]


def _pods(assembly: Assembly, kind: type[P]) -> list[P]:
    """The pods of one kind among the actors built here."""
    return [pod for rt in assembly.runtimes.values() for pod in rt.graph.pods.values()
            if isinstance(pod, kind)]


def _no_listener(_client: ClientPod, _answer: Message, _moved: tuple[int, int]) -> None:
    """A :data:`ClientListener` for a caller that wants only the unconfirmed answers."""


def _report_answers(
    graph: Graph, listener: ClientListener,
) -> Callable[[], list[tuple[ClientPod, Message]]]:
    """Call ``listener`` for each answer of the client in ``graph`` once it has left on the
    network (an answer handed to the wire has not been sent yet), with the bytes the graph's
    links moved for it: the model received before the client answered, and the update sent.
    What came in is read as the client answers, not as the answer leaves: by then the next
    round's model may have arrived. Returns what gives the answers handed to the wire and not
    (yet) confirmed sent."""
    clients = [p for p in graph.pods.values() if isinstance(p, ClientPod)]
    uplinks = [p for p in graph.pods.values() if isinstance(p, Uplink)]
    if len(clients) != 1:
        return list
    client, inbound, outbound = clients[0], LinkMeter(graph), LinkMeter(graph)
    handed: dict[int, tuple[Message, int]] = {}  # answers given to the wire, not sent yet
    early: set[int] = set()  # rounds whose answer left before the client's listener ran

    def answered(_: ClientPod, answer: Message) -> None:
        received = inbound.delta()[0]
        if not uplinks or answer.round in early:
            early.discard(answer.round)
            listener(client, answer, (received, outbound.delta()[1]))
        else:
            handed[answer.round] = (answer, received)

    def left(msg: Message, _size: int) -> None:
        if msg.sender != client.client_id or msg.kind not in (Kind.UPDATE, Kind.ERROR):
            return
        if msg.round not in handed:
            early.add(msg.round)
            return
        for rnd in sorted(r for r in handed if r <= msg.round):  # an older one is never lost
            answer, received = handed.pop(rnd)
            listener(client, answer, (received, outbound.delta()[1]))

    client.round_listeners.append(answered)
    for uplink in uplinks:
        uplink.sent_listeners.append(left)
    return lambda: [(client, handed[rnd][0]) for rnd in sorted(handed)]


async def _watch_for_models(clients: Sequence[ClientPod], every: float,
                            on_waiting: Callable[[float], None]) -> None:
    """Call ``on_waiting`` every ``every`` seconds until a client here received a model."""
    began = time.monotonic()
    while True:
        await asyncio.sleep(every)  # a timer between checks, not a wait for a condition
        if any(c.joined or c.finished.is_set() for c in clients):
            return
        on_waiting(time.monotonic() - began)


def _actor_bytes(assembly: Assembly) -> dict[str, dict[str, int]]:
    """What each actor run here received and sent on the network, over the whole job."""
    out: dict[str, dict[str, int]] = {}
    for actor, rt in assembly.runtimes.items():
        received, sent = LinkMeter(rt.graph).delta()
        out[actor] = {"bytes_in": received, "bytes_out": sent}
    return out


def _rounds_trained(assembly: Assembly) -> dict[str, int]:
    """How many rounds each client or peer run here trained."""
    # a swarm's peers exist only once their module is imported: other jobs need not import it
    peers = sys.modules.get("foedus.roles.peer")
    out: dict[str, int] = {}
    for actor, rt in assembly.runtimes.items():
        for pod in rt.graph.pods.values():
            if isinstance(pod, ClientPod):
                out[actor] = pod.rounds_trained
            elif peers is not None and isinstance(pod, peers.PeerPod):
                out[actor] = len(pod.history)
    return out


async def run_job(spec: JobSpec, *, on_round: RoundListener | None = None) -> JobResult:
    """Run every actor of ``spec`` in this process, each its own graph on the job's transport
    (one connection each for a networked transport)."""
    return await run_actors(spec, prepare(spec).actors(spec), on_round=on_round)


def run_job_sync(spec: JobSpec, *, on_round: RoundListener | None = None) -> JobResult:
    """:func:`run_job` for code that is not already inside an event loop."""
    return run_sync(run_job(spec, on_round=on_round))


def run_sync(job: Awaitable[R]) -> R:
    """``asyncio.run(job)``, the result handed back beside the task rather than as its
    result. When :func:`asyncio.run` puts back the SIGINT handler it had installed, it looks
    the handler up in :class:`signal.Handlers`, whose failed lookup formats the handler's repr,
    which holds its main task's, which holds the task's result: a :class:`JobResult` is every
    round record and the model's arrays, formatted twice for nothing as the job ends
    (milliseconds for a small job, more for a long one)."""
    out: list[R] = []

    async def main() -> None:
        out.append(await job)

    asyncio.run(main())
    return out[0]


async def run_server(spec: JobSpec, *, on_round: RoundListener | None = None) -> JobResult:
    """Run only the job's server (``foedus server``); the other actors run elsewhere."""
    topology = prepare(spec)
    if topology.leader is None:
        raise ConfigError(f"topology {topology.name} has no server; run its actors with "
                          f"`foedus actor JOB ACTOR,...` (actors: {topology.actors(spec)})")
    return await run_actors(spec, [topology.leader], on_round=on_round)


async def run_client(spec: JobSpec, index: int, *, on_client_round: ClientListener | None = None,
                     on_waiting: Callable[[float], None] | None = None) -> JobResult:
    """Run only client ``index`` (``foedus client``; under any topology: a tree's leaf, a swarm
    peer, a FedBuff client) until the job ends. It trains on share ``index`` of the job's
    dataset, or with ``partition: files`` on its own file, and reads no other data."""
    if not 0 <= index < spec.clients.count:
        raise ConfigError(f"client index must be between 0 and {spec.clients.count - 1}, "
                          f"got {index}")
    return await run_actors(spec, [client_id(index)], on_client_round=on_client_round,
                            on_waiting=on_waiting)
