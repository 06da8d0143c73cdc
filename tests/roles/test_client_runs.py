# ruff: noqa: F811  (pytest fixtures imported from the broker fixture modules are parameters)
"""A run never obeys another run: the retained ``stop`` a finished run leaves on the broker does
not end the clients of the next run of the same job id, and a client that joins after the job
finished ends on its own instead of waiting forever."""

from __future__ import annotations

import uuid

import pytest

from foedus.transport.local import LocalTransport
from foedus.transport.mqtt import MqttTransport
from tests.security.broadcast_kit import (
    forged_stop,
    make_job,
    model_topic,
    run_job_graphs,
    until,
)
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs  # noqa: F401


async def test_a_client_ignores_a_stop_of_another_run_once_it_trained() -> None:
    transport = LocalTransport()
    job = make_job(rounds=2)

    async def old_stop(rnd: int) -> None:
        if rnd == 2:  # the clients trained on this run's round 1 by now
            await transport.publish(model_topic(job.job_id), forged_stop(job.job_id, "old-run"))
            await until(lambda: all(c.refused for c in job.clients), what="stops seen")

    job.server.before_round = old_stop
    await run_job_graphs(job, transport, [transport] * 3)
    assert [r.accepted for r in job.server.history] == [3, 3]
    assert all(c.refused == {"other_run": 1} and c.end_reason == "stopped" for c in job.clients)


async def test_a_stop_that_does_not_say_finished_never_ends_a_client_without_a_model() -> None:
    transport = LocalTransport()
    job = make_job(rounds=1, stop_grace=0.0)
    runtime = job.client_runtime(0, transport)
    await runtime.start()
    try:
        await transport.publish(model_topic(job.job_id),
                                forged_stop(job.job_id, "x", finished=False))
        await transport.publish(model_topic(job.job_id), forged_stop(job.job_id, "x"))
        await until(lambda: job.clients[0].finished.is_set(), what="the finished stop")
        assert job.clients[0].end_reason == "finished_before_joining"
        assert job.clients[0].rounds_trained == 0
    finally:
        await runtime.stop()


@pytest.mark.integration
async def test_rerunning_a_job_id_on_mosquitto_trains_every_round_both_times(
    mosquitto: Mosquitto,
) -> None:
    """Clients start before the server each time: the second run's clients first receive the
    first run's retained stop, and still train every round of the second run."""
    job_id = f"rerun-{uuid.uuid4().hex[:8]}"
    runs = []
    for _ in range(2):
        job = make_job(job_id, rounds=2)
        transports = [MqttTransport(port=mosquitto.plain_port) for _ in range(4)]
        try:
            await run_job_graphs(job, transports[0], transports[1:])
        finally:
            for t in transports:
                await t.close()
        runs.append(job)
    first, second = runs
    assert first.server.run_id != second.server.run_id
    assert [r.accepted for r in second.server.history] == [3, 3]
    assert all(c.rounds_trained == 2 and c.end_reason == "stopped" for c in second.clients)


@pytest.mark.integration
async def test_a_client_started_after_the_job_finished_ends_after_its_grace(
    mosquitto: Mosquitto,
) -> None:
    job = make_job(rounds=1, stop_grace=0.5)
    transports = [MqttTransport(port=mosquitto.plain_port) for _ in range(4)]
    late_t = MqttTransport(port=mosquitto.plain_port)
    try:
        await run_job_graphs(job, transports[0], transports[1:])
        late = make_job(job.job_id, rounds=1, stop_grace=0.5)
        runtime = late.client_runtime(0, late_t)
        await runtime.start()
        try:
            await until(lambda: late.clients[0].finished.is_set(), what="the late client ends")
        finally:
            await runtime.stop()
        assert late.clients[0].end_reason == "finished_before_joining"
        assert late.clients[0].rounds_trained == 0
    finally:
        for t in (*transports, late_t):
            await t.close()
