"""Links: the pods that carry a wire across a transport.

An :class:`Uplink` encodes each message it receives and publishes it on a topic. A
:class:`Downlink` subscribes to a topic and emits every message it decodes. Bytes that fail to
decode, or messages for another job, are *rejected*: counted by reason and logged, never passed on
and never fatal, because every network input is untrusted.

A Downlink survives anything a payload does to it: an exception of any type from decoding or from
its ``accept`` predicate is counted under a reason in ``rejected`` (``undecodable`` for a
:class:`CodecError`, ``decode_error`` for any other exception the decoder raised, ``accept_error``
when the predicate raised), logged in one line without a traceback, and the payload is consumed
(acknowledged: the iterator moves past it, so a durable group does not get it again).
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
    counted in ``skipped``: they are valid, just not for this pod. ``rejected`` counts refused
    payloads by reason (see the module docstring).
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
            msg = self._admit(payload)
            if msg is None:
                continue  # counted and logged; the next payload acknowledges this one
            self.messages_in += 1
            await self.send("out", msg)

    def _admit(self, payload: bytes) -> Message | None:
        """The message a payload carries, or None after counting why it is not passed on.
        Never raises (but for BaseExceptions such as cancellation): nothing a peer sends may end
        the reader."""
        try:
            msg = decode(payload, max_size=self.max_size)
        except CodecError as exc:
            self._refuse("undecodable", f"undecodable payload: {exc}")
            return None
        except Exception as exc:  # a decoder bug: the payload is refused all the same
            self._refuse("decode_error", f"decoding failed ({type(exc).__name__}: {exc})")
            return None
        if self.job_id is not None and msg.header.job_id != self.job_id:
            self._refuse("wrong_job", f"message for job {msg.header.job_id!r}")
            return None
        if self.accept is not None:
            try:
                wanted = self.accept(msg)
            except Exception as exc:
                self._refuse("accept_error", f"accept predicate failed on a message from "
                             f"{msg.header.sender!r} ({type(exc).__name__}: {exc})")
                return None
            if not wanted:
                self.skipped += 1
                return None
        return msg

    def _refuse(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("%s: rejected a payload on %r (%s): %.300s",
                    self.name, self.topic, reason, detail)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.close()
