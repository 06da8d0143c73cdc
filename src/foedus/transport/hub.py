"""The pub/sub hub that the foedus server hosts for client-server protocols (gRPC, HTTPS).

Kafka and MQTT have a broker; gRPC and HTTPS do not, so the server process *is* the broker: it
runs a :class:`Hub` behind a protocol adapter (:class:`foedus.transport.grpc.GrpcHub`,
:class:`foedus.transport.https.HttpsHub`) and every actor, the server's own pods included,
connects as a client. The hub logic lives here once, so both protocols behave identically:

* **Topic logs.** Each topic is an append-only log of ``(offset, payload)``. A subscription is a
  :class:`Cursor` into it, so every payload published after ``open()`` reaches it, in publish
  order (one log per topic means per-key order holds trivially).
* **Retention.** ``retain=True`` also stores the payload as the topic's current value; a new
  subscriber receives it first (a late client gets the current global model).
* **Durable groups.** A group's position is committed when its consumer acknowledges a payload;
  a consumer that reconnects with the same group resumes after the last acknowledged payload.
  Delivery is at-least-once: a payload handed out but not acknowledged is delivered again.
* **Bounded memory.** The log keeps only what some live cursor or group still needs, and at most
  ``max_topic_bytes`` per topic. When that bound forces a payload out before a consumer read it,
  the loss is never silent: a live cursor fails with :class:`TransportError` and a resuming group
  is told (logged, counted in :attr:`Hub.stats`).
* **Authorization hook.** With mutual TLS the adapter passes the client's certificate identity
  with every publish; ``authorize`` (for example :func:`require_sender_identity`) may refuse it
  by raising :class:`Refused`, which the client sees as a :class:`TransportError`.

The hub is single-threaded asyncio: adapters call it from the event loop that runs them.

What the two protocols share outside the hub lives here too, so each protocol module holds only
its wire format: :class:`HubAdapter` (the server side: TLS-or-``insecure`` rule, the hub it
serves, ``async with``), :class:`HubClient` (the client side: hosting per :class:`Hosting`,
in-process use of a hosted hub, the ``max_payload`` check, closing) and
:class:`ReconnectingSubscription` (re-subscribing with backoff, via
:func:`foedus.transport.retry.retry_with_backoff`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

from foedus.core.errors import CodecError, ConfigError, TransportClosed, TransportError
from foedus.transport.base import Subscription, Transport
from foedus.transport.retry import RetryStopped, retry_with_backoff
from foedus.transport.tls import TLSConfig

log = logging.getLogger("foedus.hub")

DEFAULT_MAX_PAYLOAD = 2 * 1024**3
DEFAULT_MAX_TOPIC_BYTES = 1024**3
#: frames on the wire stay at most this big, far below gRPC's 4 MiB default message limit
CHUNK_SIZE = 1024 * 1024


class Refused(TransportError):
    """A publish was refused by the hub's ``authorize`` hook; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PayloadTooLarge(TransportError):
    """A payload exceeds the hub's ``max_payload``."""


@dataclass(frozen=True)
class Publication:
    """What an ``authorize`` hook sees: the publish and who sent it.

    ``identity`` is the common name of the client's verified certificate (mutual TLS), or None
    when the client presented none.
    """

    topic: str
    payload: bytes
    key: str | None
    retain: bool
    identity: str | None


Authorizer = Callable[[Publication], None]


def require_sender_identity(aliases: Mapping[str, str] | None = None) -> Authorizer:
    """An ``authorize`` hook: the message's ``sender`` must be the certificate's identity.

    The payload is decoded with the foedus codec (bytes that do not decode are refused too), so a
    client holding ``client-003``'s certificate cannot publish an update signed ``client-007``.
    ``aliases`` maps a certificate name to the sender name it may use, e.g.
    ``{"foedus server": "server"}`` for the server pod's own connection.
    """
    from foedus.codec import decode

    names = dict(aliases or {})

    def authorize(pub: Publication) -> None:
        if pub.identity is None:
            raise Refused("no client certificate: this hub requires mutual TLS identities")
        try:
            sender = decode(pub.payload).header.sender
        except CodecError as exc:
            raise Refused(f"payload is not a foedus message: {exc}") from exc
        allowed = names.get(pub.identity, pub.identity)
        if sender != allowed:
            raise Refused(
                f"sender {sender!r} does not match the certificate identity {pub.identity!r}"
            )

    return authorize


class _Topic:
    __slots__ = (
        "cursors",
        "groups",
        "log",
        "log_bytes",
        "lost_by_group",
        "next_offset",
        "retained",
        "wake",
    )

    def __init__(self) -> None:
        self.log: deque[tuple[int, bytes]] = deque()
        self.log_bytes = 0
        self.next_offset = 0
        self.retained: tuple[int, bytes] | None = None
        self.cursors: set[Cursor] = set()
        self.groups: dict[str, int] = {}  # group -> committed position (next offset to read)
        self.lost_by_group: Counter[str] = Counter()
        self.wake = asyncio.Event()

    @property
    def start(self) -> int:
        """The oldest offset still in the log."""
        return self.log[0][0] if self.log else self.next_offset

    def notify(self) -> None:
        self.wake.set()
        self.wake = asyncio.Event()


class Cursor:
    """One subscription's position in a topic. Obtain with :meth:`Hub.open`."""

    def __init__(self, hub: Hub, name: str, topic: _Topic, group: str | None,
                 position: int, pending: tuple[int, bytes] | None) -> None:
        self._hub = hub
        self.topic_name = name
        self._topic = topic
        self.group = group
        self.position = position
        self._pending = pending
        self._lost: str | None = None
        self.closed = False
        #: True while :meth:`next` waits for a payload (see :meth:`Hub.waiting`)
        self.waiting = False

    async def next(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The next ``(offset, payload)``, waiting up to ``timeout`` seconds (None: forever).

        Returns None on timeout; raises :class:`TransportClosed` once the cursor is closed and
        :class:`TransportError` if the cursor fell behind the log's memory bound.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.closed:
                raise TransportClosed(f"subscription to {self.topic_name!r} is closed")
            if self._lost is not None:
                raise TransportError(self._lost)
            if self._pending is not None:
                item, self._pending = self._pending, None
                return item
            topic = self._topic
            if self.position < topic.next_offset:
                index = self.position - topic.start
                offset, payload = topic.log[index]
                self.position = offset + 1
                self._hub._trim(self.topic_name, topic)
                return offset, payload
            wake = topic.wake
            self.waiting = True
            try:
                if deadline is None:
                    await wake.wait()
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    await asyncio.wait_for(wake.wait(), remaining)
            except TimeoutError:
                return None
            finally:
                self.waiting = False

    def commit(self, offset: int) -> None:
        """The consumer has processed every payload up to and including ``offset``."""
        if self.group is None or self.closed:
            return
        groups = self._topic.groups
        groups[self.group] = max(groups.get(self.group, 0), min(offset + 1, self.position))
        self._hub._trim(self.topic_name, self._topic)

    def close(self) -> None:
        """Stop delivering; a pending :meth:`next` raises :class:`TransportClosed`."""
        if not self.closed:
            self.closed = True
            self._topic.cursors.discard(self)
            self._topic.notify()
            self._hub._trim(self.topic_name, self._topic)

    def _fall_behind(self, dropped: int) -> None:
        self._lost = (
            f"subscription to {self.topic_name!r} fell behind: payload {dropped} was dropped "
            f"to keep the topic within max_topic_bytes={self._hub.max_topic_bytes}"
        )
        self._topic.notify()


class Hub:
    """Topics, retention and group cursors in the server's memory. See the module docstring."""

    def __init__(
        self, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES, authorize: Authorizer | None = None,
    ) -> None:
        if max_payload < 1 or max_topic_bytes < 1:
            raise ConfigError("max_payload and max_topic_bytes must be positive")
        self.max_payload = max_payload
        self.max_topic_bytes = max_topic_bytes
        self.authorize = authorize
        self.stats: Counter[str] = Counter()
        self._topics: dict[str, _Topic] = {}
        self.closed = False
        #: True while :meth:`drain` waits for subscribers to catch up
        self.draining = False

    def check_size(self, size: int) -> None:
        """Raise :class:`PayloadTooLarge` for a payload over ``max_payload``; adapters call it
        as soon as they know a size, before buffering the whole payload."""
        if size > self.max_payload:
            self.stats["refused_too_large"] += 1
            raise PayloadTooLarge(
                f"payload of {size} bytes exceeds the hub's max_payload={self.max_payload}"
            )

    def publish(self, pub: Publication) -> int:
        """Append to the topic's log (and retain it when asked); returns the offset."""
        self._check_open()
        if not pub.topic:
            raise TransportError("topic must be a non-empty string")
        self.check_size(len(pub.payload))
        if self.authorize is not None:
            try:
                self.authorize(pub)
            except Refused:
                self.stats["refused_unauthorized"] += 1
                log.warning("hub: refused a publish on %r from %r", pub.topic, pub.identity)
                raise
        topic = self._topic(pub.topic)
        offset = topic.next_offset
        topic.next_offset += 1
        topic.log.append((offset, pub.payload))
        topic.log_bytes += len(pub.payload)
        if pub.retain:
            topic.retained = (offset, pub.payload)
        self.stats["published"] += 1
        self.stats["published_bytes"] += len(pub.payload)
        self._trim(pub.topic, topic)
        topic.notify()
        return offset

    def open(self, topic_name: str, group: str | None = None) -> Cursor:
        """A cursor that sees every payload published from now on (plus the retained one), or,
        for a known ``group``, everything after the group's last acknowledged payload."""
        self._check_open()
        if not topic_name:
            raise TransportError("topic must be a non-empty string")
        topic = self._topic(topic_name)
        if group is not None and group in topic.groups:
            position = topic.groups[group]
            lost = topic.lost_by_group.pop(group, 0)
            if position < topic.start:
                lost += topic.start - position
                position = topic.start
            if lost:
                self.stats["group_payloads_lost"] += lost
                log.warning("hub: group %r on %r resumes after losing %d payload(s) to the "
                            "max_topic_bytes bound", group, topic_name, lost)
            cursor = Cursor(self, topic_name, topic, group, position, None)
        else:
            cursor = Cursor(self, topic_name, topic, group, topic.next_offset, topic.retained)
            if group is not None:
                topic.groups[group] = topic.next_offset
        topic.cursors.add(cursor)
        return cursor

    def waiting(self, topic_name: str) -> int:
        """How many subscriptions to ``topic_name`` wait for its next payload right now: a
        subscriber whose stream or long poll is parked on the hub (what a test or a health check
        can wait for instead of guessing with a sleep)."""
        topic = self._topics.get(topic_name)
        return 0 if topic is None else sum(cursor.waiting for cursor in topic.cursors)

    def caught_up(self) -> bool:
        """True when every live cursor has been handed everything published so far."""
        return all(
            cursor.position >= topic.next_offset and cursor._pending is None
            for topic in self._topics.values() for cursor in topic.cursors
        )

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every live cursor to catch up, so a server that
        publishes a last message (the job's "stop") and shuts down still delivers it to
        connected clients. Returns whether they caught up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.draining = True
        try:
            while not self.caught_up():
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.02)
            return True
        finally:
            self.draining = False

    def close(self) -> None:
        """End every cursor; the hub refuses further use."""
        self.closed = True
        for topic in self._topics.values():
            for cursor in list(topic.cursors):
                cursor.close()
        self._topics.clear()

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic()
        return topic

    def _trim(self, name: str, topic: _Topic) -> None:
        """Drop what nobody needs, then enforce ``max_topic_bytes`` (keeping the newest)."""
        needed = [c.position for c in topic.cursors]
        needed.extend(topic.groups.values())
        low = min(needed, default=topic.next_offset)
        while topic.log and topic.log[0][0] < low:
            self._drop(topic)
        while topic.log_bytes > self.max_topic_bytes and len(topic.log) > 1:
            offset = self._drop(topic)
            for cursor in topic.cursors:
                if cursor.position <= offset and cursor._lost is None:
                    cursor._fall_behind(offset)
                    self.stats["cursors_fell_behind"] += 1
            for group, position in topic.groups.items():
                if position <= offset:
                    topic.lost_by_group[group] += 1
                    topic.groups[group] = offset + 1

    @staticmethod
    def _drop(topic: _Topic) -> int:
        offset, payload = topic.log.popleft()
        topic.log_bytes -= len(payload)
        return offset

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed("the hub is closed")


# ---- hosting a hub inside the process that uses it (``serve:`` in a job file) -------------------
class HostedServer(Protocol):
    """What :class:`HostedHubs` starts: a protocol adapter around a :class:`Hub`."""

    hub: Hub

    async def stop(self) -> None: ...


class HostedHubs:
    """Hubs hosted by this process for transports created with ``serve=...``, per address.

    A transport that may host the hub at an address registers a *starter* when it is created;
    every transport of the process that uses the address (hosting or not) is counted. The hub is
    started the first time any of them needs it and stopped when the last of them closes. So in a
    one-process job the clients, opened before the server, still find the server's hub, while in a
    client-only process nothing is registered and transports simply connect. One instance per
    protocol module.
    """

    def __init__(self) -> None:
        self._servers: dict[str, HostedServer] = {}
        self._starters: dict[str, Callable[[], Awaitable[HostedServer]]] = {}
        self._refs: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}

    def acquire(
        self, address: str, start: Callable[[], Awaitable[HostedServer]] | None = None
    ) -> None:
        """Count a transport that uses ``address``; ``start`` is given by one that may host."""
        self._refs[address] += 1
        if start is not None:
            self._starters.setdefault(address, start)

    def hosts(self, address: str) -> bool:
        """True when a transport of this process hosts (or will host) the hub at ``address``."""
        return address in self._starters

    async def ensure(self, address: str) -> HostedServer | None:
        """The hub this process hosts at ``address``, started now if needed; None if another
        process hosts it."""
        start = self._starters.get(address)
        if start is None:
            return None
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            if address not in self._servers:
                self._servers[address] = await start()
            return self._servers[address]

    async def release(self, address: str) -> None:
        """Uncount a transport; the last one out stops the hub."""
        self._refs[address] -= 1
        if self._refs[address] <= 0:
            del self._refs[address]
            self._starters.pop(address, None)
            self._locks.pop(address, None)
            server = self._servers.pop(address, None)
            if server is not None:
                await server.stop()


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


# ---- which process hosts the hub: the ``serve``/``serve_as`` transport parameters -------------
@dataclass(frozen=True)
class Hosting:
    """How a gRPC or HTTPS transport relates to the hub at its address.

    * no ``serve``: a plain client; the hub runs elsewhere.
    * ``serve`` alone: every transport of the process may host the hub (the first one used
      starts it) and all of them connect to it over the network - the single-process mode.
    * ``serve`` with ``serve_as: NAME`` and ``actor: "{actor}"``: only the transport opened for
      actor ``NAME`` hosts the hub, and it talks to its hub in-process; every other actor is a
      client. One job file then serves ``foedus server`` and ``foedus client`` alike: the runner
      fills ``{actor}`` with ``server`` or ``client-000``... per process.

    ``verify_sender`` (with ``sender_aliases``) makes the hosted hub refuse a publish whose
    message sender is not the publisher's certificate CN (:func:`require_sender_identity`).
    """

    serve: TLSConfig | None = None
    serve_as: str | None = None
    actor: str | None = None
    verify_sender: bool = False
    sender_aliases: Mapping[str, str] | None = None

    @classmethod
    def from_params(
        cls, serve: TLSConfig | Mapping[str, Any] | None, serve_as: str | None,
        actor: str | None, verify_sender: bool, sender_aliases: Mapping[str, str] | None,
    ) -> Hosting:
        tls = TLSConfig.from_mapping(serve)
        if tls is None and (serve_as is not None or verify_sender or sender_aliases):
            raise ConfigError(
                "serve_as, verify_sender and sender_aliases configure a hosted hub: they need"
                " serve: {ca, cert, key, require_client_cert} (the hub's TLS settings)"
            )
        if serve_as is not None:
            if not isinstance(serve_as, str) or not serve_as:
                raise ConfigError(f"serve_as must be an actor name such as 'server', got "
                                  f"{serve_as!r}")
            if not isinstance(actor, str) or not actor or "{actor}" in actor:
                raise ConfigError(
                    "serve_as needs actor: \"{actor}\" in the transport params (the job runner "
                    "fills in each actor's id), or the actor's id when built by hand; "
                    f"got actor={actor!r}"
                )
        if verify_sender and tls is not None and not tls.require_client_cert:
            raise ConfigError("verify_sender needs serve.require_client_cert: true (identities "
                              "come from client certificates)")
        if sender_aliases is not None and not isinstance(sender_aliases, Mapping):
            raise ConfigError("sender_aliases must map certificate names to sender names")
        return cls(tls, serve_as, actor, bool(verify_sender),
                   dict(sender_aliases) if sender_aliases else None)

    @property
    def may_host(self) -> bool:
        """This transport starts the hub (when first needed) in its own process."""
        return self.serve is not None and (self.serve_as is None or self.actor == self.serve_as)

    @property
    def in_process(self) -> bool:
        """This transport *is* the hosting actor and uses the hub without a connection."""
        return self.serve_as is not None and self.may_host

    def authorizer(self) -> Authorizer | None:
        return require_sender_identity(self.sender_aliases) if self.verify_sender else None


# ---- the client side that the gRPC and HTTPS transports share ---------------------------------
class HubServer(HostedServer, Protocol):
    """A protocol adapter a hub client can host: ``cls(host, port, tls, authorize=...)``."""

    async def start(self) -> HostedServer: ...


def check_positive(**values: float) -> None:
    """Raise :class:`ConfigError` naming the first of ``values`` that is not positive."""
    for label, value in values.items():
        if not value > 0:
            raise ConfigError(f"{label} must be positive, got {value!r}")


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
        self.hosting = hosting
        self.serve = hosting.serve
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self._endpoint = endpoint
        self._host, self._port = host, port
        self._hub: Hub | None = None  # set when this transport is the hosting actor
        self._subs: set[Subscription] = set()
        self._closed = False
        self.hosted.acquire(endpoint, self._starter() if hosting.may_host else None)

    def _starter(self) -> Callable[[], Awaitable[HostedServer]]:
        hub_class, serve, authorize = self.hub_class, self.serve, self.hosting.authorizer()
        host, port = self._host, self._port

        async def start() -> HostedServer:
            return await hub_class(host, port, serve, authorize=authorize).start()

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

        try:
            await retry_with_backoff(self._resubscribe, retry_on=TransportError,
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


# ---- the server side that the gRPC and HTTPS hub adapters share --------------------------------
class HubAdapter(abc.ABC):
    """A :class:`Hub` served over a protocol; start it in the server process.

    ``port=0`` picks a free port (read ``port`` after :meth:`start`). ``tls`` is the server's
    TLSConfig (cert, key, CA for client certificates, ``require_client_cert``); plaintext needs
    ``insecure=True`` explicitly. ``hub`` serves an existing hub, else a new one is made with
    ``max_payload``, ``max_topic_bytes`` and the ``authorize`` hook.
    """

    #: what the protocol without TLS is called in the error that asks for ``insecure=True``
    plaintext: ClassVar[str] = "plaintext"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: TLSConfig | None = None, *,
        hub: Hub | None = None, authorize: Authorizer | None = None, insecure: bool = False,
        max_payload: int = DEFAULT_MAX_PAYLOAD, max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES,
    ) -> None:
        if tls is None and not insecure:
            raise ConfigError(f"{type(self).__name__} needs tls=TLSConfig(...) "
                              f"(or insecure=True for {self.plaintext})")
        self.host = host
        self.port = port
        self.tls = tls
        self.hub = hub or Hub(
            max_payload=max_payload, max_topic_bytes=max_topic_bytes, authorize=authorize
        )

    @abc.abstractmethod
    async def start(self) -> Self:
        """Listen on ``host:port`` and serve the hub."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving, after letting connected subscribers drain (see :meth:`Hub.drain`)."""

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
