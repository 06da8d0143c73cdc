"""Fault injection with real processes over a real MQTT broker (mosquitto).

Every actor is its own OS process (``tests/reliability/actor.py``). The faults are real: SIGKILL
of a client or of the server, a broker restarted mid-job, a client slower than the deadline, and
a client frozen with SIGSTOP for several rounds (a network partition as the server sees it).
The job must finish every round, and the round records (the server's history, which is also its
checkpoint) say exactly what happened.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from foedus.roles.checkpoint import Checkpointer
from tests.reliability.procs import Actors
from tests.transport.mqtt_fixtures import Mosquitto

pytestmark = pytest.mark.integration


def job(port: int, *, rounds: int, timeout: float, clients: int = 3, min_clients: int = 2,
        **extra: Any) -> dict[str, Any]:
    return {
        "job_id": f"faults-{uuid.uuid4().hex[:8]}", "seed": 0, "rounds": rounds,
        "round_timeout": timeout, "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": clients, "min_clients": min_clients},
        "transport": {"type": "mqtt", "params": {"host": "127.0.0.1", "port": port}},
        **extra,
    }


def test_client_killed_mid_round_is_skipped_and_rejoins_after_a_restart(
    mosquitto: Mosquitto, actors: Actors,
) -> None:
    spec = job(mosquitto.plain_port, rounds=6, timeout=4)
    # client 2 "trains" for a second, so killing it shortly after a round starts is mid-round
    clients = actors.clients(spec, [0, 0, 1.0])
    # the restarted process is loaded now: started after the kill, on a busy machine it would
    # take longer than the three remaining rounds to import and build its model
    restarted = actors.client(spec, 2, held=True)
    server = actors.server(spec)
    server.wait_round(2)
    clients[2].wait_for(lambda line: line == "training 3")  # inside its one-second round
    clients[2].kill()
    server.wait_round(3)
    restarted.release()
    summary = server.summary()
    history = {r["round"]: r for r in summary["history"]}
    assert [r["round"] for r in summary["history"]] == [1, 2, 3, 4, 5, 6]
    assert all(r["status"] == "ok" for r in summary["history"])
    assert history[3]["accepted"] == 2 and history[3]["missing_clients"] == 1  # quorum of 2
    rejoined = [r for r in range(4, 7) if history[r]["accepted"] == 3]
    assert rejoined, "the restarted client never contributed again"
    assert restarted.wait() == 0 and max(restarted.trained()) >= rejoined[0]


def test_killed_server_resumes_from_its_checkpoint_with_no_update_lost_or_doubled(
    mosquitto: Mosquitto, actors: Actors, tmp_path: Path,
) -> None:
    spec = job(mosquitto.plain_port, rounds=6, timeout=20, clients=2,
               checkpoint_dir=str(tmp_path / "ckpt"))
    clients = actors.clients(spec, [0, 0])
    first = actors.server(spec)
    first.wait_round(3)
    first.kill()  # SIGKILL: no clean shutdown, possibly between round 3's record and its save
    saved = Checkpointer(tmp_path / "ckpt", spec["job_id"]).load()
    assert saved is not None and saved.round >= 2
    second = actors.server(spec)
    summary = second.summary()
    resumed = second.rounds()
    assert resumed[0]["round"] == saved.round + 1  # continues after the last checkpoint
    assert summary["history"][: saved.round] == saved.history  # earlier rounds carried over
    assert [r["round"] for r in summary["history"]] == [1, 2, 3, 4, 5, 6]  # none twice
    # every round folded in exactly the two clients' updates: none lost, none counted twice
    # (updates redelivered from before the crash are refused as duplicates, never re-added)
    assert all(r["accepted"] == 2 and r["status"] == "ok" for r in summary["history"])
    for c in clients:
        assert c.wait() == 0


def test_job_completes_when_the_broker_restarts_mid_job(
    own_mosquitto: Mosquitto, actors: Actors,
) -> None:
    spec = job(own_mosquitto.plain_port, rounds=5, timeout=20, clients=2)
    clients = actors.clients(spec, [0, 0])
    server = actors.server(spec)
    server.wait_round(2)
    own_mosquitto.restart()  # SIGTERM (persistence written), then a new broker on the same port
    summary = server.summary(timeout=120)
    assert [r["round"] for r in summary["history"]] == [1, 2, 3, 4, 5]
    assert all(r["status"] == "ok" and r["accepted"] == 2 for r in summary["history"])
    for c in clients:
        assert c.wait() == 0


def test_client_slower_than_the_deadline_is_skipped_and_recorded_not_fatal(
    mosquitto: Mosquitto, actors: Actors,
) -> None:
    spec = job(mosquitto.plain_port, rounds=3, timeout=1.5)
    slow = actors.clients(spec, [0, 0, 2.5])[2]
    summary = actors.server(spec).summary()
    history = summary["history"]
    assert all(r["status"] == "ok" and r["accepted"] == 2 for r in history)
    assert all(r["missing_clients"] == 1 for r in history)  # recorded each round
    late = sum(r["rejected"].get("stale_round", 0) for r in history)
    assert late >= 1  # its late answers arrived and were refused as stale, with a reason
    assert slow.proc.poll() in (None, 0)  # being late broke nothing on its side either


def test_client_paused_for_several_rounds_catches_up_after_resuming(
    mosquitto: Mosquitto, actors: Actors,
) -> None:
    spec = job(mosquitto.plain_port, rounds=7, timeout=2)
    clients = actors.clients(spec, [0, 0, 0])
    server = actors.server(spec)
    clients[2].wait_for(lambda line: line == "trained 1")
    clients[2].pause()  # SIGSTOP: a partition, as the server sees it
    server.wait_round(4)
    clients[2].resume()
    summary = server.summary()
    history = {r["round"]: r for r in summary["history"]}
    assert all(r["status"] == "ok" for r in history.values())
    assert all(history[r]["accepted"] == 2 for r in (2, 3, 4))  # the quorum carried on
    caught_up = [r for r in (5, 6, 7) if history[r]["accepted"] == 3]
    assert caught_up, f"client 2 never contributed after resuming: {history}"
    assert clients[2].wait() == 0
    assert max(clients[2].trained()) >= caught_up[0]
