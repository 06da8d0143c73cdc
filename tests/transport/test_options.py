"""Broker transports refuse a true/false option given as anything but a boolean, when built
(before, they took ``bool(value)``: ``verify_sender: "no"`` switched the check on)."""

from __future__ import annotations

import pytest

from foedus.core.errors import ConfigError
from foedus.transport.base import check_flags


def test_check_flags_names_the_first_non_boolean() -> None:
    check_flags(a=True, b=False)
    with pytest.raises(ConfigError, match=r"^b must be true or false, got 'no'$"):
        check_flags(a=True, b="no", c=1)


def test_mqtt_verify_sender_must_be_a_boolean() -> None:
    pytest.importorskip("paho.mqtt")
    from foedus.transport.mqtt import MqttTransport

    with pytest.raises(ConfigError, match=r"^verify_sender must be true or false, got 'no'$"):
        MqttTransport(host="127.0.0.1", port=1, verify_sender="no")  # type: ignore[arg-type]


def test_kafka_create_topics_must_be_a_boolean() -> None:
    pytest.importorskip("aiokafka")
    from foedus.transport.kafka import KafkaTransport

    with pytest.raises(ConfigError, match=r"^create_topics must be true or false, "
                                          r"got 'false'$"):
        KafkaTransport("127.0.0.1:1", create_topics="false")  # type: ignore[arg-type]
