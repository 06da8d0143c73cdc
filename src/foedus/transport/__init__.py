"""Transports carry bytes between actors; :mod:`foedus.transport.base` is the contract."""

from foedus.transport.base import Subscription, Transport, transports
from foedus.transport.local import LocalTransport

__all__ = ["LocalTransport", "Subscription", "Transport", "transports"]
