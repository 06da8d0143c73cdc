"""A swarm of separate processes over a real Kafka-protocol broker: no server, one peer killed
mid-run, the others carry on and agree on a model that learned."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.topology.helpers import digits, distance
from tests.transport.kafka_fixtures import Tansu

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def spawn(job: dict[str, Any], index: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.topology.swarm_actor", json.dumps(job), str(index)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"peer {index} did not start: {line!r}")
    return proc


def read_until(proc: subprocess.Popen[str], round: int | None) -> list[dict[str, Any]]:
    """The peer's printed lines up to round ``round`` (``None``: to the end)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        if round is not None and lines[-1].get("round") == round:
            break
    return lines


def reap(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


async def test_separate_peer_processes_survive_a_killed_peer_and_agree(tansu: Tansu) -> None:
    # the deadline is how long a peer waits for a slower live one: shorter, a loaded machine
    # leaves a slow peer's model out of a round and the peers no longer agree (the dead peer
    # costs one deadline, in round 3)
    job = {"job_id": f"swarm-{uuid.uuid4().hex[:6]}", "peers": 4, "rounds": 5,
           "round_timeout": 10.0, "bootstrap": tansu.bootstrap}
    procs = [spawn(job, i) for i in range(4)]
    try:
        await asyncio.to_thread(read_until, procs[3], 2)
        reap(procs[3])  # killed after round 2: no leave notice
        outputs = await asyncio.gather(*(asyncio.to_thread(read_until, p, None)
                                         for p in procs[:3]))
        codes = [await asyncio.to_thread(p.wait, 30) for p in procs[:3]]
    finally:
        reap(*procs)
    assert codes == [0, 0, 0]
    finals = []
    for lines in outputs:
        rounds = [line for line in lines if "round" in line]
        assert rounds[-1]["round"] == 5
        assert "peer-3" not in rounds[-1]["alive"]
        finals.append({k: np.asarray(v) for k, v in lines[-1]["params"].items()})
    # full gossip: one model (a failure shows each peer's rounds: who it heard, how many came)
    assert max(distance(finals[0], f) for f in finals[1:]) < 1e-6, \
        [[line for line in lines if "round" in line] for lines in outputs]
    assert digits(4).accuracy(finals[0]) > 0.85
