"""Fixtures for the topology tests: the real Kafka-protocol broker (Tansu) of the transport
tests, shared here for the multi-process swarm test."""

from tests.transport.kafka_fixtures import tansu  # noqa: F401
