"""Hierarchical and asynchronous jobs as separate processes over a real Kafka-protocol broker
(Tansu): each process loads the same job and runs only its own actors
(:func:`foedus.runner.run_actors`).

Hierarchical: the root server is one process, and each edge runs in one process together with
its clients (one process per site, as an organisation would run its edge next to its clients).
Asynchronous: the FedBuff server and every client are each their own process.

Most of each test's time is starting Python processes (imports), not federated rounds: the
rounds of a test take 1-2 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.runner import run_job
from tests.transport.kafka_fixtures import Tansu

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

NORTH = ["north", "client-000", "client-001", "client-002"]
SOUTH = ["south", "client-003", "client-004", "client-005"]


def job(bootstrap: str, kind: str, rounds: int, round_timeout: float,
        **params: Any) -> dict[str, Any]:
    return {
        "job_id": f"{kind}-{uuid.uuid4().hex[:6]}", "seed": 0, "rounds": rounds,
        "round_timeout": round_timeout,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 6},
        # a constant step, as in the in-process tests: reproducible to float rounding
        "model": {"type": "sklearn-sgd", "params": {"learning_rate": "constant", "eta0": 0.02}},
        "transport": {"type": "kafka", "params": {"bootstrap": bootstrap}},
        "topology": {"type": kind, "params": params},
    }


def tree_job(bootstrap: str, rounds: int, round_timeout: float, **params: Any) -> dict[str, Any]:
    return job(bootstrap, "hierarchical", rounds, round_timeout,
               tree=[{"edge": "north", "children": NORTH[1:]},
                     {"edge": "south", "children": SOUTH[1:]}], **params)


def start(spec: dict[str, Any], actors: list[str], delay: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.topology.topology_actor", json.dumps(spec),
         ",".join(actors), str(delay)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    """Block until the process printed ``ready`` (all its actors subscribed)."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"actor process did not start: {line!r}")


async def start_all(spec: dict[str, Any], groups: list[tuple[list[str], float]]
                    ) -> list[subprocess.Popen[str]]:
    """Start every group's process at once and wait until all are subscribed."""
    procs = [start(spec, actors, delay) for actors, delay in groups]
    try:
        await asyncio.gather(*(asyncio.to_thread(wait_ready, p) for p in procs))
    except BaseException:
        reap(*procs)
        raise
    return procs


def read_until(proc: subprocess.Popen[str], stop: Any = None) -> list[dict[str, Any]]:
    """The process's JSON lines (not ``ready``) up to the first for which ``stop`` is true
    (default: to EOF)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        if line.strip() == "ready":
            continue
        lines.append(json.loads(line))
        if stop is not None and stop(lines[-1]):
            break
    return lines


async def finish(*procs: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Each process's final result; every process must exit cleanly."""
    outputs = await asyncio.gather(*(asyncio.to_thread(read_until, p) for p in procs))
    codes = [await asyncio.to_thread(p.wait, 30) for p in procs]
    assert codes == [0] * len(procs)
    return [lines[-1]["result"] for lines in outputs]


def reap(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def model(result: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in result["params"].items()}


async def test_hierarchical_processes_learn_the_same_model_as_the_flat_run(tansu: Tansu) -> None:
    spec = tree_job(tansu.bootstrap, rounds=4, round_timeout=20)
    # all three at once: the root's model topic is retained, so a site that subscribes late
    # still gets round 1, well within the root's 20 s deadline
    procs = [start(spec, NORTH), start(spec, SOUTH), start(spec, ["server"])]
    try:
        north, south, root = await finish(*procs)
    finally:
        reap(*procs)
    rounds = root["records"]["server"]
    assert [r["accepted"] for r in rounds] == [2] * 4
    assert [len(site["records"][edge]) for site, edge in ((north, "north"), (south, "south"))] \
        == [4, 4]
    assert north["params"] is None and south["params"] is None  # the model lives at the root
    assert root["metrics"]["accuracy"] > 0.85

    flat = await run_job(JobSpec.from_dict(  # same job, one process, no tree
        spec | {"topology": {"type": "centralized"}, "transport": "local"}))
    for name, value in model(root).items():
        np.testing.assert_allclose(value, flat.params[name], rtol=1e-9, atol=1e-12)


async def test_an_edge_process_killed_mid_run_and_the_root_carries_on(tansu: Tansu) -> None:
    spec = tree_job(tansu.bootstrap, rounds=4, round_timeout=2.0, min_children=1)
    # 0.3 s of training per round, so the kill lands in round 2 at the latest
    procs = await start_all(spec, [(NORTH, 0.3), (SOUTH, 0.3)])
    try:
        procs.append(start(spec, ["server"]))
        north, south, root = procs
        first = await asyncio.to_thread(read_until, root, lambda line: "record" in line)
        reap(south)  # the south site dies after round 1: no goodbye, its clients with it
        rest = await asyncio.to_thread(read_until, root)
        assert await asyncio.to_thread(root.wait, 30) == 0
        (north_result,) = await finish(north)
    finally:
        reap(*procs)
    rounds = [line["record"] for line in first + rest if "record" in line]
    accepted = [r["accepted"] for r in rounds]
    # round 2 may already be under way when the kill lands; the last ones run without south
    assert len(accepted) == 4 and accepted[0] == 2 and accepted[-2:] == [1, 1]
    assert all(r["status"] == "ok" for r in rounds)
    assert [r["accepted"] for r in north_result["records"]["north"]] == [3] * 4  # unharmed
    assert rest[-1]["result"]["metrics"]["accuracy"] > 0.85


async def test_fedbuff_processes_with_3x_different_speeds_learn_without_a_barrier(
    tansu: Tansu,
) -> None:
    spec = job(tansu.bootstrap, "async", rounds=4, round_timeout=15,
               buffer_size=2, versions=20, max_staleness=8)
    spec["clients"]["count"] = 3
    delays = [0.05, 0.1, 0.15]  # local training time: the slowest 3x the fastest
    # the clients first: a client process that happened to start seconds late would contribute
    # less for a reason other than its speed
    procs = await start_all(spec, [([f"client-00{i}"], d) for i, d in enumerate(delays)])
    procs.append(start(spec, ["server"]))
    try:
        *_, server = await finish(*procs)
    finally:
        reap(*procs)
    versions = server["records"]["server"]
    assert len(versions) == 20
    assert np.mean([v["metrics"]["accuracy"] for v in versions[-5:]]) > 0.85
    assert server["metrics"]["accuracy"] > 0.85
    contributions = Counter(s for v in versions for s in v["senders"])
    assert contributions["client-000"] > contributions["client-002"] > 0
    assert any(s > 0 for v in versions for s in v["staleness"])  # nobody waited for the others
