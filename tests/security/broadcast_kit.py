"""A small real job (digits, sklearn SGD) whose actors run as separate graphs on any transport,
plus the outsider that attacks its model topic: shared by the broadcast, run and session tests.

The job is wired by hand exactly as the centralized topology wires it (``server_graph`` and
``client_graph``), with the broadcast protections the ``sign`` stage gives when the lead's
topology passes them: the server's ``broadcast_signer``, each client's ``verify_broadcast``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import foedus.models.sklearn  # noqa: F401  (registers the sklearn models)
from foedus.aggregate.fedavg import FedAvg
from foedus.codec import encode
from foedus.core.filter import Filter
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.data.datasets import load_dataset
from foedus.data.partition import partition
from foedus.models.base import build_model
from foedus.roles.client import ClientPod
from foedus.roles.server import ServerPod
from foedus.security.signing import SignStage, create_signing_keys
from foedus.topology.centralized import client_graph, server_graph, topics
from foedus.transport.base import Transport

CLIENTS = ("client-000", "client-001", "client-002")


def signing(tmp: Path) -> SignStage:
    """A ``sign`` stage whose keys cover the server and every client (one job file's)."""
    create_signing_keys(tmp, ["server", *CLIENTS])
    return SignStage(private_key=str(tmp / "{sender}.key"), public_keys=str(tmp / "public"))


class GatedServer(ServerPod):
    """A server that awaits ``before_round(rnd)`` first: lets a test attack between rounds and
    wait until the attack has been seen, instead of hoping it lands in time."""

    before_round: Callable[[int], Awaitable[None]] | None = None

    async def _run_round(self, rnd: int) -> None:
        if self.before_round is not None:
            await self.before_round(rnd)
        await super()._run_round(rnd)


@dataclass
class Job:
    """One job's actors; ``runtimes()`` builds their graphs on the given transports."""

    job_id: str
    server: GatedServer
    clients: list[ClientPod]
    client_filters: list[list[Filter]] = field(default_factory=list)
    server_filters: list[Filter] = field(default_factory=list)

    def server_runtime(self, transport: Transport) -> Runtime:
        return Runtime(server_graph(self.server, transport, filters=self.server_filters))

    def client_runtime(self, i: int, transport: Transport) -> Runtime:
        filters = self.client_filters[i] if self.client_filters else []
        return Runtime(client_graph(self.clients[i], transport, self.job_id, filters=filters))


def make_job(
    job_id: str | None = None, *, rounds: int = 3, sign: SignStage | None = None,
    stop_grace: float = 120.0, round_timeout: float = 30.0, **client_options: Any,
) -> Job:
    train, _, spec = load_dataset("digits", test_fraction=0.2, seed=0)
    shares = partition(train, len(CLIENTS), scheme="iid", seed=0)
    job_id = job_id or f"bc-{uuid.uuid4().hex[:8]}"
    server = GatedServer(
        job_id=job_id, initial_params=build_model("sklearn-sgd", spec, seed=0).get_params(),
        aggregator=FedAvg(), rounds=rounds, expected_clients=len(CLIENTS),
        round_timeout=round_timeout, participants=list(CLIENTS),
    )
    clients = [
        ClientPod(client_id=cid, model=build_model("sklearn-sgd", spec, seed=0), data=share,
                  stop_grace=stop_grace,
                  verify_broadcast=sign.broadcast_verifier() if sign else None,
                  **client_options)
        for cid, share in zip(CLIENTS, shares, strict=True)
    ]
    job = Job(job_id, server, clients)
    if sign is not None:
        server.broadcast_signer = sign.broadcast_signer(server.name)
        job.client_filters = [[sign.client()] for _ in CLIENTS]
        job.server_filters = [sign.server()]
    return job


def forged_stop(job_id: str, run: Any = None, finished: bool = True) -> bytes:
    """What an outsider writes: a well-formed, CRC-valid ``stop`` under the server's name."""
    meta: dict[str, Any] = {"action": "stop", "finished": finished}
    if run is not None:
        meta["run"] = run
    return encode(Message.create(Kind.CONTROL, job_id=job_id, round=0, sender="server",
                                 meta=meta))


def forged_model(job_id: str, rnd: int, like: dict[str, np.ndarray], run: Any = None) -> bytes:
    """A well-formed model of the right shapes, full of garbage, under the server's name."""
    params = {k: np.full_like(np.asarray(v), 1e3) for k, v in like.items()}
    return encode(Message.create(Kind.MODEL, job_id=job_id, round=rnd, sender="server",
                                 params=params, meta={} if run is None else {"run": run}))


async def until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Wait for ``condition`` (polled on the loop) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)


async def run_job_graphs(job: Job, server_t: Transport, client_ts: Sequence[Transport],
                         timeout: float = 120.0) -> None:
    """Clients first (each subscribed before the server broadcasts), then the server; returns
    when the server's run ends and every client has stopped (or the grace ran out)."""
    clients = [job.client_runtime(i, t) for i, t in enumerate(client_ts)]
    for rt in clients:
        await rt.start()
    server = job.server_runtime(server_t)
    try:
        await server.start()
        await asyncio.wait_for(server.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*(rt.wait() for rt in clients)), 30)
    finally:
        await server.stop()
        for rt in clients:
            await rt.stop()


def model_topic(job_id: str) -> str:
    return topics(job_id).model
