# ruff: noqa: F811  (pytest fixtures imported from the broker fixture modules are parameters)
"""Durable MQTT sessions belong to their actor: an intruder who knows the job id, the topic and
the group cannot compute the server's session id, so the updates queued for the server while it
was away still reach the server. And a job's retained leftovers can be cleared."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from foedus.certs import DeploymentCerts
from foedus.core.errors import ConfigError
from foedus.transport.base import Subscription
from foedus.transport.mqtt import MqttTransport
from foedus.transport.state import clear_job_state
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs  # noqa: F401

pytestmark = pytest.mark.integration


async def take(sub: Subscription, n: int, timeout: float = 20.0) -> list[bytes]:
    async def go() -> list[bytes]:
        return [await sub.__anext__() for _ in range(n)]

    return await asyncio.wait_for(go(), timeout)


async def queued_while_away(server_options: dict, port: int) -> tuple[list[bytes], list[bytes]]:  # type: ignore[type-arg]
    """The server subscribes with its group and goes away; an intruder who knows the job
    connects with the group (the id it can compute) and reads what it gets; five updates are
    published; the server comes back. Returns (what the intruder got, what the server got)."""
    job = uuid.uuid4().hex[:8]
    topic, group = f"foedus.{job}.updates", f"{job}.server"
    first = MqttTransport(port=port, **server_options)
    await (await first.subscribe(topic, group=group)).close()  # the session persists, queueing
    await first.close()
    intruder, publisher = MqttTransport(port=port), MqttTransport(port=port)
    server = MqttTransport(port=port, **server_options)
    try:
        stolen_sub = await intruder.subscribe(topic, group=group)
        sent = [f"update-{i}".encode() for i in range(5)]
        for payload in sent:
            await publisher.publish(topic, payload, key="client-000")
        stolen = await take(stolen_sub, 5)  # live or queued: the intruder's session gets them
        await stolen_sub.close()  # acknowledged: gone from whatever session it held
        sub = await server.subscribe(topic, group=group)
        await publisher.publish(topic, b"marker", key="client-000")
        got: list[bytes] = []
        while not got or got[-1] != b"marker":
            got += await take(sub, 1)
        return stolen, got[:-1]
    finally:
        for t in (intruder, publisher, server):
            await t.close()


async def test_an_intruder_cannot_take_over_a_session_derived_from_a_secret(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    _, got = await queued_while_away({"session_dir": str(tmp_path)}, mosquitto.plain_port)
    assert got == [f"update-{i}".encode() for i in range(5)]  # every queued update arrived


async def test_without_a_secret_the_public_session_id_is_stolen(mosquitto: Mosquitto) -> None:
    """Why the secret exists: the public-name derivation hands the queue to the intruder."""
    stolen, got = await queued_while_away({}, mosquitto.plain_port)
    assert stolen and got == []


async def test_a_tls_client_key_makes_the_session_id_private(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts,
) -> None:
    cert, key = mqtt_certs.clients["fl-server"]
    other_cert, other_key = mqtt_certs.clients["client-000"]
    tls = {"ca": str(mqtt_certs.ca), "cert": str(cert), "key": str(key)}
    mine = MqttTransport(port=mosquitto.mtls_port, tls=tls)
    again = MqttTransport(port=mosquitto.mtls_port, tls=tls)
    participant = MqttTransport(port=mosquitto.mtls_port, tls={
        "ca": str(mqtt_certs.ca), "cert": str(other_cert), "key": str(other_key)})
    plain = MqttTransport(port=mosquitto.plain_port)
    try:
        ids = {t.session_client_id("foedus.j.updates", "j.server")
               for t in (participant, plain)}
        own = mine.session_client_id("foedus.j.updates", "j.server")
        assert own == again.session_client_id("foedus.j.updates", "j.server")  # restarts resume
        assert own not in ids  # a participant's own certificate does not give it the id
    finally:
        for t in (mine, again, participant, plain):
            await t.close()


async def test_the_session_secret_persists_in_session_dir_and_restarts_resume(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    topic, group = f"t-{uuid.uuid4().hex[:8]}", "g"
    first = MqttTransport(port=mosquitto.plain_port, session_dir=str(tmp_path))
    await (await first.subscribe(topic, group=group)).close()
    await first.close()
    assert (tmp_path / MqttTransport.SESSION_SECRET_FILE).stat().st_mode & 0o077 == 0
    pub = MqttTransport(port=mosquitto.plain_port)
    second = MqttTransport(port=mosquitto.plain_port, session_dir=str(tmp_path))
    try:
        await pub.publish(topic, b"while away")
        assert await take(await second.subscribe(topic, group=group), 1) == [b"while away"]
    finally:
        await pub.close()
        await second.close()


def test_bad_session_settings_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="session_secret"):
        MqttTransport(session_secret="short")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="session_dir"):
        MqttTransport(session_dir=str(tmp_path / "file"))


async def test_clear_job_state_removes_the_retained_stop_of_a_finished_run(
    mosquitto: Mosquitto,
) -> None:
    job = uuid.uuid4().hex[:8]
    model = f"foedus.{job}.model"
    owner = MqttTransport(port=mosquitto.plain_port, chunk_size=1024)
    late = MqttTransport(port=mosquitto.plain_port)
    try:
        await owner.publish(model, b"x" * 5000, retain=True)  # several retained chunks
        await owner.publish(model, b"stop", retain=True)
        assert await clear_job_state(owner, job) == [model]
        sub = await late.subscribe(model)
        await owner.publish(model, b"live")
        assert await take(sub, 1) == [b"live"]  # no retained value came first
    finally:
        await owner.close()
        await late.close()
