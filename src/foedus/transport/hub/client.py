"""The client side that the gRPC and HTTPS transports share, apart from their wire formats.

:class:`HubClient` hosts the hub when its :class:`~foedus.transport.hub.hosting.Hosting` says so,
uses a hub it hosts in-process (:class:`HubSubscription`, no connection and no client
certificate), checks the ``max_payload`` before sending and closes what it opened;
:class:`ReconnectingSubscription` re-subscribes with backoff when a hub restarts (via
:func:`foedus.transport.retry.retry_with_backoff`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

from foedus.core.errors import ConfigError, TransportClosed, TransportError
from foedus.transport.base import Subscription, Transport
from foedus.transport.hub.hosting import HostedHubs, HostedServer, Hosting
from foedus.transport.hub.store import Cursor, Hub, Publication
from foedus.transport.retry import RetryStopped, retry_with_backoff


class HubServer(HostedServer, Protocol):
    """A protocol adapter a hub client can host:
    ``cls(host, port, tls, authorize=..., linger=..., limits=...)``."""

    async def start(self) -> HostedServer: ...


def check_positive(**values: float) -> None:
    """Raise :class:`ConfigError` naming the first of ``values`` that is not a positive number
    (a string from a job file used to fail with "'>' not supported between instances")."""
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{label} must be a positive number, got {value!r}")



class HubClient(Transport):
    """What a gRPC or HTTPS transport does apart from speaking its protocol.

    It hosts the hub when its :class:`Hosting` says so, talks to a hub it hosts in-process
    without a connection, checks payloads against the hub's ``max_payload`` before sending, and
    closes its subscriptions, its connection and its share of the hosted hub. Subclasses set the
    class attributes and implement the ``_connect`` .. ``_disconnect`` hooks; they validate
    their own parameters first and call ``super().__init__`` last, because it counts the
    transport in ``hosted`` (which :meth:`close` uncounts).
    """

    #: the protocol's name in messages ("gRPC", "HTTPS")
    label: ClassVar[str]
    #: the hubs this protocol's transports host in this process
    hosted: ClassVar[HostedHubs]
    #: the adapter started when this transport hosts the hub
    hub_class: ClassVar[Callable[..., HubServer]]
    #: the protocol module's logger
    log: ClassVar[logging.Logger]

    def __init__(
        self, endpoint: str, host: str, port: int, hosting: Hosting, *,
        connect_timeout: float, reconnect_timeout: float,
    ) -> None:
        if port == 0 and hosting.serve is None:
            raise ConfigError(
                f"{self.label} hub address {endpoint}: port 0 means any free port, which only "
                "the process that hosts the hub (serve:) can bind; a client must name the "
                "hub's port")
        self.hosting = hosting
        self.serve = hosting.serve
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self._endpoint = endpoint
        self._host, self._port = host, port
        #: the port connections go to: the address's, or with port 0 the one this process's
        #: hub bound (known once it started; see :meth:`_ready`)
        self._dial_port = port
        self._hub: Hub | None = None  # set when this transport is the hosting actor
        self._subs: set[Subscription] = set()
        self._closed = False
        self.hosted.acquire(endpoint, self._starter() if hosting.may_host else None)

    def _starter(self) -> Callable[[], Awaitable[HostedServer]]:
        hub_class, serve, authorize = self.hub_class, self.serve, self.hosting.authorizer()
        host, port, linger = self._host, self._port, self.hosting.linger_s
        limits = self.hosting.limits

        async def start() -> HostedServer:
            return await hub_class(host, port, serve, authorize=authorize,
                                   linger=linger, limits=limits).start()

        return start

    # ---- hooks --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def _connect(self) -> Any:
        """The connection to a hub in another process, set up (and handshaken) if needed."""
        ...

    @abc.abstractmethod
    def _max_payload(self) -> int:
        """The hub's ``max_payload``, known once :meth:`_connect` returned."""
        ...

    @abc.abstractmethod
    async def _publish_remote(
        self, conn: Any, topic: str, view: memoryview, key: str | None, retain: bool
    ) -> None:
        ...

    @abc.abstractmethod
    async def _subscribe_remote(self, topic: str, group: str | None) -> Subscription:
        ...

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Close the connection (subscriptions are already closed)."""
        ...

    async def host(self) -> bool:
        """Start the hub now if this transport hosts it (True), instead of on first use: a
        process that waits before its actors start (the federation's gated server process)
        listens while it waits, so the clients connect and subscribe meanwhile. False when
        another process hosts the hub (nothing is done)."""
        if self._closed:
            raise TransportClosed(f"the {self.name} transport is closed")
        return await self.hosted.ensure(self._endpoint) is not None

    # ---- the Transport API --------------------------------------------------------------------
    async def _ready(self) -> Any:
        """The connection to the hub (None for the hosting actor, which uses the hub directly)."""
        if self._closed:
            raise TransportClosed(f"the {self.name} transport is closed")
        server = await self.hosted.ensure(self._endpoint)
        if self.hosting.in_process:
            assert server is not None
            self._hub = server.hub
            return None
        if self._port == 0:  # "any free port": the one our own hub bound, if we host one
            if server is None:
                raise ConfigError(
                    f"{self.label} hub address {self._endpoint}: port 0 means any free port, "
                    "and this process hosts no hub there to tell which; name the hub's port")
            self._dial_port = server.port
        return await self._connect()

    async def publish(
        self, topic: str, payload: bytes, *, key: str | None = None, retain: bool = False
    ) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TransportError(f"payload must be bytes, got {type(payload).__name__}")
        conn = await self._ready()
        if conn is None:
            assert self._hub is not None
            self._hub.publish(Publication(topic, bytes(payload), key, retain, self.hosting.actor))
            return
        view = memoryview(payload).cast("B")
        limit = self._max_payload()
        if view.nbytes > limit:
            raise TransportError(f"payload of {view.nbytes} bytes exceeds the {self.label} hub's "
                                 f"max_payload={limit}")
        await self._publish_remote(conn, topic, view, key, retain)

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        if await self._ready() is None:
            assert self._hub is not None
            sub: Subscription = HubSubscription(self._hub.open(topic, group))
        else:
            sub = await self._subscribe_remote(topic, group)
        self._subs.add(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.close()
        self._subs.clear()
        await self._disconnect()
        await self.hosted.release(self._endpoint)


class ReconnectingSubscription(Subscription):
    """A remote subscription that re-opens itself, with backoff, when it breaks (the hub
    restarted or the connection dropped), for up to the transport's ``reconnect_timeout``.

    After a hub restart offsets and group positions start over, so the unacknowledged payload is
    dropped from our books (and delivered again if the hub still has it). Subclasses implement
    :meth:`_resubscribe` (open anew and keep the handle) and :meth:`_end` (say goodbye).
    """

    def __init__(self, owner: HubClient, topic: str, group: str | None) -> None:
        self._owner = owner
        self.topic = topic
        self.group = group
        self._unacked: int | None = None
        self._closed = False
        self.reconnects = 0

    @abc.abstractmethod
    async def _resubscribe(self) -> None:
        ...

    @abc.abstractmethod
    async def _end(self) -> None:
        ...

    async def _reopen(self, why: str) -> None:
        """Subscribe again; raises StopAsyncIteration if the subscription is closed meanwhile."""
        owner, label = self._owner, self._owner.label
        self._unacked = None
        owner.log.warning("%s subscription to %r broke (%s); re-subscribing", label, self.topic,
                          why)

        def give_up(exc: BaseException) -> TransportError:
            return TransportError(
                f"{label} subscription to {self.topic!r} broke ({why}) and could not be "
                f"re-established within {owner.reconnect_timeout}s: {exc}"
            )

        loop = asyncio.get_running_loop()
        deadline = loop.time() + owner.reconnect_timeout

        async def attempt() -> None:
            # an attempt may wait for the hub (up to connect_timeout): not past the budget
            try:
                await asyncio.wait_for(self._resubscribe(), max(deadline - loop.time(), 0.1))
            except TimeoutError:
                raise TransportError("the hub did not answer in time") from None

        try:
            await retry_with_backoff(attempt, retry_on=TransportError,
                                     timeout=owner.reconnect_timeout, give_up=give_up,
                                     stopped=lambda: self._closed)
        except RetryStopped:
            raise StopAsyncIteration from None
        self.reconnects += 1
        owner.log.info("%s subscription to %r re-established", label, self.topic)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner._subs.discard(self)
        await self._end()


class HubSubscription(Subscription):
    """A subscription straight on a :class:`Hub` in this process: what the actor that hosts the
    hub uses, so the server's own pods need no loopback connection (and no client certificate).
    A payload is acknowledged (group position committed) when the iterator moves past it."""

    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor
        self._unacked: int | None = None

    async def __anext__(self) -> bytes:
        if self._unacked is not None:
            self._cursor.commit(self._unacked)
            self._unacked = None
        try:
            item = await self._cursor.next()
        except TransportClosed:
            raise StopAsyncIteration from None
        assert item is not None
        self._unacked, payload = item
        return payload

    async def close(self) -> None:
        if self._unacked is not None:
            self._cursor.commit(self._unacked)
            self._unacked = None
        self._cursor.close()
