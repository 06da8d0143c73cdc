# ruff: noqa: F811  (pytest fixtures imported from the broker fixture modules are parameters)
"""The forged-broadcast attack over real brokers: an outsider, a separate plain client on the
broker, publishes a well-formed, CRC-valid ``stop`` (with the run id it read on the topic) and
a forged model on the model topic between rounds. With ``sign`` every client refuses both and
the job finishes all its rounds, on Mosquitto and on Kafka (Tansu)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from foedus.transport.base import Transport
from foedus.transport.kafka import KafkaTransport
from foedus.transport.mqtt import MqttTransport
from tests.security.broadcast_kit import signing
from tests.security.test_broadcasts import attack_during_job
from tests.transport.kafka_fixtures import Tansu, tansu  # noqa: F401  (fixture)
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs  # noqa: F401

pytestmark = pytest.mark.integration


async def signed_job_survives(make: Callable[[], Transport], tmp_path: Path) -> None:
    transports = [make() for _ in range(4)]
    outsider = make()
    try:
        job = await attack_during_job(transports, outsider, sign=signing(tmp_path))
    finally:
        for t in (*transports, outsider):
            await t.close()
    assert [r.accepted for r in job.server.history] == [3, 3, 3]  # type: ignore[attr-defined]
    for client in job.clients:  # type: ignore[attr-defined]
        assert client.refused == {"unsigned": 2}
        assert client.rounds_trained == 3 and client.end_reason == "stopped"


async def test_forged_broadcasts_are_refused_over_mosquitto(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    await signed_job_survives(lambda: MqttTransport(port=mosquitto.plain_port), tmp_path)


async def test_forged_broadcasts_are_refused_over_kafka(tansu: Tansu, tmp_path: Path) -> None:
    await signed_job_survives(lambda: KafkaTransport(tansu.bootstrap), tmp_path)
