"""The hub's state: topic logs, retained values and group cursors in the server's memory.

This is the broker half of the hub, with no network in it (the protocol adapters in
:mod:`foedus.transport.grpc` and :mod:`foedus.transport.https` call it):

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
* **Bounded per peer.** What one peer (certificate name, else IP address) holds at once is
  bounded by :class:`~foedus.transport.hub.limits.PeerLimits`: subscriptions, durable groups it
  creates, and hub-wide the number of topics (a topic nobody uses any more is forgotten). The
  adapters pass the peer with every ``open``; refusals are counted in :attr:`Hub.stats` as
  ``refused_<reason>`` (see :mod:`foedus.transport.hub.limits`).
* **Authorization hook.** With mutual TLS the adapter passes the client's certificate identity
  with every publish (a :class:`Publication`); ``authorize`` may refuse it by raising
  :class:`Refused`, which the client sees as a :class:`TransportError`.

The hub is single-threaded asyncio: adapters call it from the event loop that runs them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from foedus.core.errors import ConfigError, TransportClosed, TransportError
from foedus.transport.hub.limits import PeerLimits, PeerTable

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
                 position: int, pending: tuple[int, bytes] | None,
                 peer: str | None = None) -> None:
        self._hub = hub
        #: whose subscription this is (counted against its limits until it closes)
        self.peer = peer
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
            if self.peer is not None:
                self._hub.peers.release(self.peer, "subscriptions")
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
        limits: PeerLimits | None = None,
    ) -> None:
        if max_payload < 1 or max_topic_bytes < 1:
            raise ConfigError("max_payload and max_topic_bytes must be positive")
        self.max_payload = max_payload
        self.max_topic_bytes = max_topic_bytes
        self.authorize = authorize
        self.stats: Counter[str] = Counter()
        self.limits = limits or PeerLimits()
        #: what each peer holds right now (connections, subscriptions, uploads, groups)
        self.peers = PeerTable(self.limits, self.stats)
        self._topics: dict[str, _Topic] = {}
        self.closed = False
        #: True while :meth:`drain` or :meth:`linger` waits for subscribers
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

    def open(self, topic_name: str, group: str | None = None, peer: str | None = None) -> Cursor:
        """A cursor that sees every payload published from now on (plus the retained one), or,
        for a known ``group``, everything after the group's last acknowledged payload.

        ``peer`` (the adapters pass it) counts the subscription, and a new group, against that
        peer's limits; over one, :class:`~foedus.transport.hub.limits.LimitExceeded` is raised
        before anything is created."""
        self._check_open()
        if not topic_name:
            raise TransportError("topic must be a non-empty string")
        if peer is not None:
            self.peers.acquire(peer, "subscriptions")
        try:
            topic = self._topic(topic_name)
            if peer is not None and group is not None and group not in topic.groups:
                self.peers.acquire(peer, "groups")  # durable: never released
        except TransportError:
            if peer is not None:
                self.peers.release(peer, "subscriptions")
            self._forget_if_unused(topic_name)
            raise
        return self._open(topic_name, topic, group, peer)

    def _open(self, topic_name: str, topic: _Topic, group: str | None,
              peer: str | None) -> Cursor:
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
            cursor = Cursor(self, topic_name, topic, group, position, None, peer)
        else:
            cursor = Cursor(self, topic_name, topic, group, topic.next_offset, topic.retained,
                            peer)
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

    def subscribers(self) -> int:
        """How many subscriptions are open on the hub, on every topic."""
        return sum(len(topic.cursors) for topic in self._topics.values())

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every live cursor to catch up, so a server that
        publishes a last message (the job's "stop") and shuts down still delivers it to
        connected clients. Returns whether they caught up."""
        return await self._wait(self.caught_up, timeout)

    async def linger(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every subscriber to leave (close its
        subscription), still serving whatever they publish meanwhile.

        The hub lives in the job leader's process, but the job's end is not the leader's
        alone: an edge relays the leader's "stop" to its children *through this hub*, and the
        children leave only once they have it. A hub that closed as soon as the leader's own
        subscribers had caught up would cut that relay off, and the edge's clients would wait
        for a stop that can no longer arrive. Actors close their subscriptions when they end,
        so "nobody subscribed any more" is "every actor has finished". Returns whether they
        all left in time."""
        return await self._wait(lambda: self.subscribers() == 0, timeout)

    async def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Poll ``done`` (cursors change from many handlers, with no single event to await)
        until it is true or ``timeout`` seconds passed; :attr:`draining` meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.draining = True
        try:
            while not done():
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.02)
            return True
        finally:
            self.draining = False

    def close(self) -> None:
        """End every cursor; the hub refuses further use."""
        self.closed = True
        for topic in list(self._topics.values()):
            for cursor in list(topic.cursors):
                cursor.close()
        self._topics.clear()

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            if len(self._topics) >= self.limits.max_topics:
                self.peers.refuse("topics", f"the hub already has {self.limits.max_topics} "
                                            "topics (the limit)")
            topic = self._topics[name] = _Topic()
        return topic

    def topics(self) -> int:
        """How many topics the hub holds (used ones: see :meth:`_forget_if_unused`)."""
        return len(self._topics)

    def _forget_if_unused(self, name: str) -> None:
        """Drop a topic nobody subscribes to, no group tracks and nothing is retained on: an
        outsider's throwaway topics must not fill the hub's ``max_topics`` for good."""
        topic = self._topics.get(name)
        if topic is not None and not (topic.cursors or topic.groups or topic.retained
                                      or topic.log):
            del self._topics[name]

    def _trim(self, name: str, topic: _Topic) -> None:
        """Drop what nobody needs, then enforce ``max_topic_bytes`` (keeping the newest)."""
        needed = [c.position for c in topic.cursors]
        needed.extend(topic.groups.values())
        low = min(needed, default=topic.next_offset)
        while topic.log and topic.log[0][0] < low:
            self._drop(topic)
        if not topic.log and not topic.cursors and not topic.groups and topic.retained is None:
            self._forget_if_unused(name)
            return
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
