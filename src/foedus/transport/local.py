"""The in-process transport: the embedded default, and what unit tests run on.

Topics live in one process. Each subscription has its own queue (a slow subscriber holds its
backlog in memory); groups keep a durable cursor into a per-topic log so a re-subscribing group
resumes where it left off, exactly as the Kafka transport does across processes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from foedus.core.errors import TransportClosed, TransportError
from foedus.transport.base import Subscription, Transport, transports

_END = object()


class _LocalSubscription(Subscription):
    def __init__(self, owner: LocalTransport, topic: str, group: str | None) -> None:
        self._owner = owner
        self.topic = topic
        self.group = group
        self._queue: asyncio.Queue[bytes | object] = asyncio.Queue()
        self._closed = False
        self._last: int | None = None  # log index of the payload handed out last

    def _put(self, index: int, payload: bytes) -> None:
        if not self._closed:
            self._queue.put_nowait((index, payload))

    async def __anext__(self) -> bytes:
        if self._last is not None and self.group is not None:
            self._owner._commit(self.topic, self.group, self._last + 1)
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        index, payload = item  # type: ignore[misc]
        self._last = index
        return payload  # type: ignore[no-any-return,return-value]

    async def close(self) -> None:
        if not self._closed:
            if self._last is not None and self.group is not None:
                self._owner._commit(self.topic, self.group, self._last + 1)
            self._closed = True
            self._owner._detach(self)
            self._queue.put_nowait(_END)


@transports.register("local")
class LocalTransport(Transport):
    """Topics in memory. ``max_payload`` mirrors a broker's message size limit."""

    name = "local"
    shared = True

    def __init__(self, *, max_payload: int = 2 * 1024**3) -> None:
        self.max_payload = max_payload
        self._subs: dict[str, list[_LocalSubscription]] = defaultdict(list)
        self._retained: dict[str, tuple[int, bytes]] = {}
        self._logs: dict[str, list[bytes]] = defaultdict(list)  # only kept for grouped topics
        self._cursors: dict[tuple[str, str], int] = {}
        self._grouped_topics: set[str] = set()
        self._freed: dict[str, int] = {}  # per topic: log entries below this were released
        self._closed = False

    async def publish(
        self, topic: str, payload: bytes, *, key: str | None = None, retain: bool = False
    ) -> None:
        self._check_open()
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TransportError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > self.max_payload:
            raise TransportError(
                f"payload of {len(payload)} bytes exceeds max_payload={self.max_payload}"
            )
        payload = bytes(payload)
        log = self._logs[topic]
        index = len(log)
        log.append(payload if topic in self._grouped_topics else b"")
        if retain:
            self._retained[topic] = (index, payload)
        for sub in list(self._subs[topic]):
            sub._put(index, payload)
        await asyncio.sleep(0)  # let subscribers run, as a network round trip would

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        self._check_open()
        sub = _LocalSubscription(self, topic, group)
        log = self._logs[topic]
        if group is not None:
            self._grouped_topics.add(topic)
            start = self._cursors.get((topic, group))
            if start is not None:  # resume: replay what was published while we were away
                for index in range(start, len(log)):
                    sub._put(index, log[index])
                self._subs[topic].append(sub)
                return sub
        if topic in self._retained:
            index, payload = self._retained[topic]
            sub._put(index, payload)
        if group is not None:
            self._cursors.setdefault((topic, group), len(log))
        self._subs[topic].append(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subs in self._subs.values():
            for sub in list(subs):
                await sub.close()
        self._logs.clear()
        self._retained.clear()

    def _commit(self, topic: str, group: str, position: int) -> None:
        self._cursors[(topic, group)] = max(position, self._cursors.get((topic, group), 0))
        # release payloads every group has consumed; only their index slot remains
        low = min(p for (t, _), p in self._cursors.items() if t == topic)
        log = self._logs[topic]
        for i in range(self._freed.get(topic, 0), min(low, len(log))):
            log[i] = b""
        self._freed[topic] = max(self._freed.get(topic, 0), low)

    def _detach(self, sub: _LocalSubscription) -> None:
        if sub in self._subs[sub.topic]:
            self._subs[sub.topic].remove(sub)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("the local transport is closed")
