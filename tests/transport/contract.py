"""The transport contract now ships in :mod:`foedus.testing.transport_contract`, so third-party
transports can run it; this module re-exports it for the test modules that import it from here."""

from __future__ import annotations

from foedus.testing.transport_contract import MakeTransport, TransportContract, take, topic

__all__ = ["MakeTransport", "TransportContract", "take", "topic"]
