"""The Transport contract every way of moving bytes (in-process, Kafka, MQTT, gRPC, HTTPS) meets.

A transport moves opaque payloads (encoded messages) on named topics. The contract is small on
purpose, so a new transport is a few hundred lines and the rest of foedus never changes:

* ``await publish(topic, payload, key=..., retain=...)`` hands a payload to the transport. It
  returns once the transport has accepted it (for networked ones: acknowledged by the broker or
  peer). ``key`` keeps one sender's messages in order; ``retain=True`` marks the payload as the
  topic's *current value*: a subscriber that arrives later still receives the latest retained
  payload first (a client that was offline gets the current global model).
* ``await subscribe(topic, group=...)`` returns a :class:`Subscription` once it is established:
  every payload published after that point is delivered, in publish order per key. With a
  ``group`` the position is durable: a subscriber that reconnects with the same group resumes
  after the last payload it consumed, so nothing published meanwhile is lost. A payload counts as
  consumed when the iterator advances past it or the subscription is closed cleanly; after a
  crash the last payload handed out may be delivered again (at-least-once), so receivers
  de-duplicate (the server does, by sender and round).
* ``await close()`` releases everything; using a closed transport raises ``TransportClosed``.

Payloads are ``bytes``. Size limits, chunking of large payloads and TLS are each transport's own
business and invisible here.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Collection
from types import TracebackType

from foedus.core.errors import ConfigError
from foedus.core.registry import Registry


class Subscription(abc.ABC):
    """An async iterator of payloads from one topic."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> bytes:
        """The next payload; raises ``StopAsyncIteration`` once the subscription is closed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving; a pending ``__anext__`` ends with ``StopAsyncIteration``."""

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Transport(abc.ABC):
    """Publish/subscribe of byte payloads on named topics. See the module docstring."""

    #: the registry name, e.g. "local" or "kafka"
    name: str = "transport"
    #: True when all actors of a job must share one instance (the in-process transport);
    #: networked transports are opened once per actor, as separate processes would
    shared: bool = False

    @abc.abstractmethod
    async def publish(
        self, topic: str, payload: bytes, *, key: str | None = None, retain: bool = False
    ) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def admit_senders(self, topic: str, senders: Collection[str] | None) -> bool:
        """Optional: subscriptions to ``topic`` made from now on drop payloads whose publisher
        is not one of ``senders`` before they are reassembled or decoded, counting each
        (``None``: admit everyone). Returns whether this transport can tell publishers apart
        before decoding (the Kafka record key, MQTT's publisher property); by default it
        cannot, and a non-participant's messages are decoded and then refused by the server
        (``unknown_sender``). Readers call it, before subscribing, when they know who may
        write the topic (a job's participants), so a non-participant's flood costs them next
        to nothing."""
        del topic, senders
        return False

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


#: registered transports, by the name a job file uses (``transport: {type: kafka}``)
transports: Registry[Transport] = Registry("transport")


def check_flags(**values: bool) -> None:
    """Raise :class:`ConfigError` naming the first of ``values`` that is not a boolean: the
    transports used to take ``bool(value)``, so ``insecure: "false"`` meant plaintext."""
    for label, value in values.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
