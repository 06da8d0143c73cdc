"""Fixtures of the reliability suite: real brokers (reused from the transport tests) and the
processes a test starts, killed afterwards whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.procs import Actors
from tests.transport.kafka_fixtures import tansu
from tests.transport.mqtt_fixtures import mosquitto, mqtt_certs, own_mosquitto

__all__ = ["mosquitto", "mqtt_certs", "own_mosquitto", "tansu"]  # fixtures used by name


@pytest.fixture
def actors(tmp_path: Path) -> Iterator[Actors]:
    started = Actors(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()
