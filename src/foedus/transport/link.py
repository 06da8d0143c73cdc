"""Links: the pods that carry a wire across a transport.

An :class:`Uplink` encodes each message it receives and publishes it on a topic. A
:class:`Downlink` subscribes to a topic and emits every message it decodes. Bytes that fail to
decode, or messages for another job, are *rejected*: counted by reason and logged, never passed on
and never fatal, because every network input is untrusted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from foedus.codec import DEFAULT_MAX_SIZE, decode, encode
from foedus.core.errors import CodecError
from foedus.core.message import Message
from foedus.core.pod import Pod, Wire
from foedus.transport.base import Subscription, Transport

log = logging.getLogger("foedus.link")


class Uplink(Pod):
    """Publishes messages arriving on ``in`` to ``topic`` (keyed by sender, so per-sender order
    holds). ``retain`` marks each payload as the topic's current value (global models)."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

    def __init__(
        self, transport: Transport, topic: str | Callable[[Message], str], *,
        retain: bool = False, name: str | None = None,
    ) -> None:
        super().__init__(name or "uplink")
        self.transport = transport
        self.topic = topic
        self.retain = retain
        self.bytes_out = 0
        self.messages_out = 0

    async def on_in(self, msg: Message) -> None:
        payload = encode(msg)
        topic = self.topic(msg) if callable(self.topic) else self.topic
        await self.transport.publish(topic, payload, key=msg.sender, retain=self.retain)
        self.bytes_out += len(payload)
        self.messages_out += 1


class Downlink(Pod):
    """Emits on ``out`` every valid message published to ``topic``.

    ``accept`` is an optional predicate (e.g. "is this addressed to me?"); messages it refuses are
    counted in ``skipped``: they are valid, just not for this pod.
    """

    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)
    daemon = True

    def __init__(
        self, transport: Transport, topic: str, *, job_id: str | None = None,
        group: str | None = None, max_size: int = DEFAULT_MAX_SIZE,
        accept: Callable[[Message], bool] | None = None, name: str | None = None,
    ) -> None:
        super().__init__(name or "downlink")
        self.transport = transport
        self.topic = topic
        self.job_id = job_id
        self.group = group
        self.max_size = max_size
        self.accept = accept
        self.rejected: Counter[str] = Counter()
        self.skipped = 0
        self.bytes_in = 0
        self.messages_in = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # Subscribe before anything runs, so no payload published after start() is missed.
        self._sub = await self.transport.subscribe(self.topic, group=self.group)

    async def run(self) -> None:
        assert self._sub is not None
        async for payload in self._sub:
            self.bytes_in += len(payload)
            try:
                msg = decode(payload, max_size=self.max_size)
            except CodecError as exc:
                self.rejected["undecodable"] += 1
                log.warning("%s: rejected undecodable payload on %r: %s",
                            self.name, self.topic, exc)
                continue
            if self.job_id is not None and msg.header.job_id != self.job_id:
                self.rejected["wrong_job"] += 1
                log.warning("%s: rejected message for job %r", self.name, msg.header.job_id)
                continue
            if self.accept is not None and not self.accept(msg):
                self.skipped += 1
                continue
            self.messages_in += 1
            await self.send("out", msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.close()
