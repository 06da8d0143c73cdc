# ruff: noqa: F811  (pytest fixtures imported from the broker fixture modules are parameters)
"""The attack run's poison frame over real brokers: counted once, never redelivered, and the
valid message behind it still arrives, also to a reader restarted on the same group."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from foedus.transport.base import Transport
from foedus.transport.kafka import KafkaTransport
from foedus.transport.mqtt import MqttTransport
from tests.transport.kafka_fixtures import Tansu, tansu  # noqa: F401  (fixture)
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs  # noqa: F401
from tests.transport.test_link import TOPIC, poison_frame, run_downlink, update

pytestmark = pytest.mark.integration


async def poison_then_valid(make: Callable[[], Transport]) -> None:
    group = f"server-{uuid.uuid4().hex[:6]}"
    sender, first, second = make(), make(), make()
    try:
        runtime, r = await run_downlink(first, group=group)
        try:
            await sender.publish(TOPIC, poison_frame(), key="mallory")
            await sender.publish(TOPIC, update("client-000"), key="client-000")
            assert (await r.next(30)).sender == "client-000"
            assert r.link.rejected == {"undecodable": 1}
        finally:
            await runtime.__aexit__(None, None, None)
        await sender.publish(TOPIC, update("client-001"), key="client-001")
        runtime, again = await run_downlink(second, group=group)
        try:
            assert (await again.next(30)).sender == "client-001"
            assert again.link.rejected == {}  # the poison frame was acknowledged, not redelivered
        finally:
            await runtime.__aexit__(None, None, None)
    finally:
        for t in (sender, first, second):
            await t.close()


async def test_poison_frame_over_mosquitto(mosquitto: Mosquitto) -> None:
    await poison_then_valid(lambda: MqttTransport(port=mosquitto.plain_port))


async def test_poison_frame_over_kafka(tansu: Tansu) -> None:
    await poison_then_valid(lambda: KafkaTransport(tansu.bootstrap))


