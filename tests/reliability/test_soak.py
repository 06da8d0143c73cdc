"""Soak: many rounds of the demo job in one process, resident memory sampled every round.

A server that keeps a reference to every round's updates, a link that never frees a buffer or a
client that stacks up models grows round after round; here the process's RSS after warm-up must
stay within a small bound. The full-length run (200 rounds, also with actors as separate
processes) is ``bench/soak.py``; this is its reduced version for CI.
"""

from __future__ import annotations

import gc

import psutil
import pytest

from foedus.config.spec import ClientSection, DataSection, JobSpec
from foedus.roles.server import RoundRecord
from foedus.runner import run_job

ROUNDS = 60
WARMUP = 10
#: growth allowed after warm-up: allocator noise, the per-round history records, log buffers
BOUND_MB = 12.0


@pytest.mark.integration
async def test_resident_memory_stays_flat_over_sixty_demo_rounds() -> None:
    process = psutil.Process()
    rss: list[float] = []
    objects: list[int] = []

    def sample(record: RoundRecord) -> None:
        rss.append(process.memory_info().rss / 2**20)
        if record.round in (WARMUP, ROUNDS):
            gc.collect()
            objects.append(len(gc.get_objects()))

    spec = JobSpec(job_id="soak", rounds=ROUNDS, round_timeout=30,
                   data=DataSection(dataset="digits", partition="dirichlet", alpha=0.5),
                   clients=ClientSection(count=5))
    result = await run_job(spec, on_round=sample)
    assert len(result.history) == ROUNDS and all(r.accepted == 5 for r in result.history)
    after_warmup = rss[WARMUP - 1]
    growth = max(rss[WARMUP:]) - after_warmup
    assert growth < BOUND_MB, f"RSS grew {growth:.1f} MiB after warm-up: {rss[WARMUP - 1::10]}"
    # and live Python objects: about a few per round (the history), not per update or per array
    assert objects[1] - objects[0] < 200 * (ROUNDS - WARMUP), objects


@pytest.mark.integration
async def test_a_megabyte_model_over_thirty_rounds_does_not_accumulate_updates() -> None:
    import asyncio

    import numpy as np

    from foedus.aggregate.fedavg import FedAvg
    from foedus.codec import decode, encode
    from foedus.core.message import Kind
    from foedus.core.runtime import Runtime
    from foedus.roles.server import ServerPod
    from foedus.topology.centralized import server_graph, topics
    from foedus.transport.local import LocalTransport

    process = psutil.Process()
    rss: list[float] = []
    server = ServerPod(job_id="soak-mb", initial_params={"w": np.zeros(1 << 18, np.float32)},
                       aggregator=FedAvg(), rounds=30, expected_clients=2, round_timeout=30)
    server.round_listeners.append(lambda r: rss.append(process.memory_info().rss / 2**20))
    transport = LocalTransport()
    t = topics("soak-mb")

    async def client(name: str) -> None:
        sub = await transport.subscribe(t.model)
        async for payload in sub:
            model = decode(payload)
            if model.kind is Kind.CONTROL:
                return
            update = model.reply(Kind.UPDATE, name, num_examples=1,
                                 params={"w": model.params["w"] + 1})
            await transport.publish(t.updates, encode(update))

    tasks = [asyncio.create_task(client(n)) for n in ("a", "b")]
    await asyncio.sleep(0.01)
    async with Runtime(server_graph(server, transport)) as runtime:
        await asyncio.wait_for(runtime.wait(), 120)
    await asyncio.gather(*tasks)
    await transport.close()
    growth = max(rss[5:]) - rss[4]
    assert growth < 16, f"RSS grew {growth:.0f} MiB in 25 rounds of 1 MiB updates"
