"""Fixtures for the privacy tests: a real Kafka-protocol broker (Tansu) on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.transport.kafka_fixtures import Tansu


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    broker = Tansu(tmp_path / "tansu")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
