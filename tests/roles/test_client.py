"""A client whose server goes silent after it answered ends with :class:`ServerSilent` (a
server dead behind a broker that stays up is not seen by the transport); one that keeps
hearing from its server, or that has not joined yet, is not ended by the deadline."""

from __future__ import annotations

import asyncio

import pytest

from foedus.codec import encode
from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.roles.client import ServerSilent
from foedus.transport.local import LocalTransport
from tests.security.broadcast_kit import make_job, model_topic, run_job_graphs, until

SILENCE = 0.4  # seconds: five times a tiny round_timeout of 0.08 s


async def test_a_client_that_answered_and_then_hears_nothing_fails_naming_the_silence() -> None:
    transport = LocalTransport()
    job = make_job(rounds=1, silence_timeout=SILENCE)
    client = job.clients[0]
    runtime = job.client_runtime(0, transport)
    await runtime.start()
    try:
        model = Message.create(Kind.MODEL, job_id=job.job_id, round=3, sender="server",
                               params=job.server.params, meta={"run": "r1"})
        await transport.publish(model_topic(job.job_id), encode(model))  # then the server dies
        await until(lambda: client.rounds_trained == 1, what="the client's answer")
        await asyncio.wait_for(runtime.wait(), 5.0)  # ends by itself, well before 5 s
        [failure] = runtime.stats.failures
        assert isinstance(failure.cause, ServerSilent)
        assert str(failure.cause) == (f"no model from the job's server for {SILENCE:g}s after "
                                      "round 3: is the server still running?")
        assert not client.finished.is_set()
    finally:
        await runtime.stop()


async def test_a_client_that_never_joined_is_not_ended_by_the_silence_deadline() -> None:
    transport = LocalTransport()
    job = make_job(rounds=1, silence_timeout=0.05)
    runtime = job.client_runtime(0, transport)
    await runtime.start()
    try:
        with pytest.raises(TimeoutError):  # no model ever came: the on_waiting path's case
            await asyncio.wait_for(asyncio.shield(runtime.wait()), 0.5)
        assert not runtime.stats.failures
    finally:
        await runtime.stop()


async def test_clients_hearing_from_their_server_each_round_run_the_whole_job() -> None:
    transport = LocalTransport()
    job = make_job(rounds=4, silence_timeout=SILENCE)
    await run_job_graphs(job, transport, [transport] * 3)
    assert [r.accepted for r in job.server.history] == [3, 3, 3, 3]
    assert all(c.end_reason == "stopped" and c.rounds_trained == 4 for c in job.clients)


def test_a_silence_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="silence_timeout must be positive"):
        make_job(silence_timeout=0.0)
