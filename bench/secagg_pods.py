"""Secure aggregation over pods: one FL round's cost through the in-process transport.

Run: ``.venv/bin/python bench/secagg_pods.py [--params 1000000] [--clients 10 50 100]
[--ring 64]``. Unlike ``bench/secagg.py`` (the bare protocol) this runs whole rounds through
:func:`run_secure_aggregation_job`: wire encoding, topics, the step state machines. "client s" is
the mean thread CPU time one client spends in protocol steps, "server s" the server's thread CPU
time in its steps (routing, unmasking); "round s" the round's wall time on this 2-core box with
every client in one process (no training: the update is a fixed random vector). Bytes are the
encoded messages a client publishes (advertise, shares, masked vector, unmask answer), and what
the server publishes on ``secagg.down`` per round.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

from foedus.aggregate.fedavg import FedAvg
from foedus.core.params import Params
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter
from foedus.privacy import secagg
from foedus.privacy.secagg_pods import SecureSumSettings, secagg_topic
from foedus.roles.client import ClientPod
from foedus.roles.secure_server import SecureServerPod
from foedus.topology.secure_sum import run_secure_aggregation_job
from foedus.transport.local import LocalTransport

CPU: dict[str, float] = defaultdict(float)


def timed(owner: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any) -> Any:
        began = time.thread_time()
        try:
            return fn(self, *args)
        finally:
            key = f"client-{self.id}" if owner == "client" else "server"
            CPU[key] += time.thread_time() - began
    return wrapper


for _name in ("advertise", "share_keys", "masked_input", "unmask"):
    setattr(secagg.SecAggClient, _name, timed("client", getattr(secagg.SecAggClient, _name)))
for _name in ("collect_keys", "route_shares", "collect_masked", "finish"):
    setattr(secagg.SecAggServer, _name, timed("server", getattr(secagg.SecAggServer, _name)))


class CountingTransport(LocalTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[tuple[str, str], int] = defaultdict(int)

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None,
                      retain: bool = False) -> None:
        self.sent[(topic, key or "")] += len(payload)
        await super().publish(topic, payload, key=key, retain=retain)


class RandomUpdate(ModelAdapter):
    name: ClassVar[str] = "random-update"

    def __init__(self, size: int, seed: int) -> None:
        self.params = {"w": np.random.default_rng(seed).uniform(-1, 1, size).astype(np.float32)}

    def get_params(self) -> Params:
        return dict(self.params)

    def set_params(self, params: Params) -> None:
        pass

    def begin_round(self, seed: int) -> None:
        pass

    def fit(self, data: Dataset, epochs: int = 1) -> dict[str, float]:
        return {}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        return {}


async def one_round(n: int, size: int, ring: int) -> dict[str, float]:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(8))
    CPU.clear()
    ids = [f"c{i:03d}" for i in range(n)]
    if ring == 64:
        settings = SecureSumSettings(max_dropouts=max(1, (n - 1) // 3), weighting="uniform",
                                     value_range=1.0, step_timeout=600)
    else:
        settings = SecureSumSettings(max_dropouts=max(1, (n - 1) // 3), weighting="uniform",
                                     value_range=1.0, scale_bits=16, ring_bits=32,
                                     step_timeout=600)
    transport = CountingTransport()
    data = Dataset(np.zeros((1, 1)), np.zeros(1))
    clients = [(ClientPod(client_id=c, model=RandomUpdate(size, i), data=data), transport)
               for i, c in enumerate(ids)]
    server = SecureServerPod(job_id="bench", initial_params={"w": np.zeros(size, np.float32)},
                             aggregator=FedAvg(), rounds=1, expected_clients=n,
                             participants=ids, round_timeout=600)
    began = time.perf_counter()
    history = await run_secure_aggregation_job(server, transport, clients, settings)
    wall = time.perf_counter() - began
    assert history[0].accepted == n, history
    updates = "foedus.bench.updates"
    per_client = [transport.sent[(updates, c)] for c in ids]
    down = sum(v for (t, _), v in transport.sent.items() if t == secagg_topic("bench"))
    return {
        "client_s": float(np.mean([CPU[f"client-{i + 1}"] for i in range(n)])),
        "server_s": CPU["server"], "round_s": history[0].duration_s, "wall_s": wall,
        "client_bytes": float(np.mean(per_client)), "down_bytes": float(down),
    }


async def plain_round(n: int, size: int) -> float:
    """The same round without secure aggregation (run_centralized), for comparison."""
    from foedus.roles.server import ServerPod
    from foedus.topology.centralized import run_centralized

    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(8))
    ids = [f"c{i:03d}" for i in range(n)]
    transport = LocalTransport()
    data = Dataset(np.zeros((1, 1)), np.zeros(1))
    server = ServerPod(job_id="plain", initial_params={"w": np.zeros(size, np.float32)},
                       aggregator=FedAvg(), rounds=1, expected_clients=n, participants=ids,
                       round_timeout=600)
    history = await run_centralized(server, transport, [
        (ClientPod(client_id=c, model=RandomUpdate(size, i), data=data), transport, [])
        for i, c in enumerate(ids)])
    return history[0].duration_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--ring", type=int, choices=(32, 64), default=64)
    parser.add_argument("--plain", action="store_true", help="only time plain FedAvg rounds")
    args = parser.parse_args()
    if args.plain:
        print("| clients | params | plain round s (wall) |\n|---|---|---|")
        for n in args.clients:
            print(f"| {n} | {args.params:,} | {asyncio.run(plain_round(n, args.params)):.2f} |",
                  flush=True)
        return
    print("| clients | params | ring | client s (CPU, mean) | server s (CPU) | round s (wall) "
          "| bytes sent per client | server bytes on secagg.down | plain float32 bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.clients:
        r = asyncio.run(one_round(n, args.params, args.ring))
        print(f"| {n} | {args.params:,} | {args.ring} | {r['client_s']:.3f} | "
              f"{r['server_s']:.3f} | {r['round_s']:.2f} | {r['client_bytes']:,.0f} | "
              f"{r['down_bytes']:,.0f} | {4 * args.params:,} |", flush=True)


if __name__ == "__main__":
    main()
