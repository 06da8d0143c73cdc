"""The simulation engine: one pod stands for thousands of virtual clients.

Instead of one graph per client, a simulation wires the server to a single
:class:`VirtualClients` pod::

    server.model ──(feedback)──→ clients.model
    clients.update ──→ [server filters] ──→ server.update

Virtual clients are cheap: an id and a data partition (plus the state of their own filters,
e.g. error-feedback residuals). Models exist only inside the backend's workers. The server
applies exactly the checks, filters and aggregation it applies to networked clients, and the
backends count the bytes a deployment would move: the same job file runs unchanged with
``foedus run`` on real transports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import ClassVar

from foedus.config.parts import JobParts, RoundListener, build_parts, client_id
from foedus.config.spec import JobSpec
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.core.runtime import Runtime
from foedus.roles.server import RoundRecord
from foedus.runner import JobResult, chance_accuracy, prepare
from foedus.sim.backends import Backend, ClientWork, make_backend

#: messages a pod's inbox holds in a simulation: each waiting update is a model-sized copy
#: (measured with a 4.77M-parameter model, 20 clients: the runtime's default of 16 made the
#: thread backend's peak 1.36x a bare loop's, one made it 1.09-1.12x; docs/architecture.md)
SIM_QUEUE = 1


def client_work(spec: JobSpec, parts: JobParts | None = None) -> ClientWork:
    """A job's client side; process and Ray workers rebuild it from the spec alone."""
    parts = parts or build_parts(spec)
    return ClientWork(
        shares=parts.shares, ids=[client_id(i) for i in range(len(parts.shares))],
        epochs=spec.clients.epochs, seed=spec.seed, make_model=parts.make_model,
        make_filters=parts.client_filters,
    )


class VirtualClients(Pod):
    """All of a simulation's clients as one pod; training happens on ``backend``."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("model"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("update"),)

    def __init__(self, backend: Backend, client_ids: Sequence[str], name: str = "clients") -> None:
        super().__init__(name)
        self.backend = backend
        self.index = {cid: i for i, cid in enumerate(client_ids)}
        self.finished = asyncio.Event()

    async def on_model(self, msg: Message) -> None:
        if msg.kind is Kind.CONTROL:
            self.finished.set()
            return
        selected = msg.meta.get("selected")
        indices = (
            sorted(self.index[c] for c in selected) if selected is not None
            else list(range(len(self.index)))
        )
        async for batch in self.backend.train(msg, indices):
            for update in batch:
                await self.send("update", update)

    async def run(self) -> None:
        await self.finished.wait()


async def run_simulation(
    spec: JobSpec, *, backend: str = "thread", workers: int | None = None,
    on_round: RoundListener | None = None, **backend_options: object,
) -> JobResult:
    """Run ``spec`` as a simulation; the job's transport setting is not used.

    The job's topology says whether it can be simulated, before any data is read (e.g. a
    swarm has no server to wire the virtual clients to: refused in one line).
    """
    began = time.perf_counter()
    topology = prepare(spec)
    topology.check_simulation(spec)
    pool = make_backend(backend, workers, **backend_options)
    parts: JobParts | None = None
    try:
        # the pool's slow start (worker processes importing the model's framework and
        # building their data) runs while this process builds the job's own parts
        pool.launch(spec)
        parts = build_parts(spec)
        if on_round is not None:
            parts.round_listeners.append(on_round)
        server = topology.simulation_server(parts)
        work = client_work(spec, parts)
        pool.start(work, spec)
        server.round_listeners.insert(0, _RoundBytes(pool))
        clients = VirtualClients(pool, work.ids)
        graph = Graph(f"{spec.job_id}/simulation").add(server, clients)
        graph.pipe(f"{clients.name}.update", parts.server_filters(), f"{server.name}.update",
                   model=f"{server.name}.model", model_feedback=True)
        graph.connect(f"{server.name}.model", f"{clients.name}.model", feedback=True)
        # one message waiting per pod: with one worker, training runs on the event loop and
        # the server gets a turn only between clients, so a deeper inbox filled up with
        # updates (model copies) faster than the server folded them in: 16 held at once
        # with the default
        runtime = Runtime(graph, queue_size=SIM_QUEUE)
        startup = time.perf_counter() - began
        async with runtime:
            await runtime.wait()
        for failure in runtime.stats.failures:
            raise failure
    except BaseException:
        if parts is not None:
            parts.finish(None, failed=True)
        raise
    finally:
        pool.close()
    result = JobResult(
        job_id=spec.job_id, clients=spec.clients.count, history=list(server.history),
        params=server.params, duration_s=time.perf_counter() - began, topology=topology.name,
        actors=[server.name, clients.name],
        extra={
            "stop_reason": server.stop_reason, "backend": backend,
            "workers": pool_workers(pool), "startup_s": round(startup, 3),
            "bytes_down": pool.bytes_down, "bytes_up": pool.bytes_up,
        },
    )
    if parts.server_evaluates and parts.data_spec.task == "classification" and len(parts.test):
        result.extra["chance_accuracy"] = chance_accuracy(parts.test.y)
    result.extra.update(parts.finish(server.params, failed=result.failure is not None))
    return result


class _RoundBytes:
    """Puts in each round's record the bytes a deployment would have moved in it (the pool
    counts them): updates into the server, the model out to the clients."""

    def __init__(self, pool: Backend) -> None:
        self.pool = pool
        self.seen = (0, 0)

    def __call__(self, record: RoundRecord) -> None:
        now = (self.pool.bytes_up, self.pool.bytes_down)
        record.bytes_in, record.bytes_out = now[0] - self.seen[0], now[1] - self.seen[1]
        self.seen = now


def pool_workers(pool: Backend) -> int:
    return int(getattr(pool, "workers", 1))


def run_simulation_sync(spec: JobSpec, **options: object) -> JobResult:
    """:func:`run_simulation` for code outside an event loop."""
    return asyncio.run(run_simulation(spec, **options))  # type: ignore[arg-type]
