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

Floods. A Downlink that knows who may write its topic (``senders``: a job's participants) asks
the transport to drop everyone else's payloads before they are reassembled or decoded
(:meth:`~foedus.transport.base.Transport.admit_senders`; Kafka and MQTT can, by the record key
or the publisher property; the others leave it to the server's ``unknown_sender`` check). And
``per_round`` bounds the work one sender can cause: beyond that many messages naming one
(sender, round), further ones are refused as ``flood`` before anything downstream (filters,
signature checks, the server) sees them. Refusals are logged at most :data:`LOG_PER_SECOND`
lines a second; every one is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from foedus.codec import DEFAULT_MAX_SIZE, decode, encode
from foedus.core.errors import CodecError, ConfigError, TransportError
from foedus.core.message import Message
from foedus.core.pod import Pod, Wire
from foedus.transport.base import Subscription, Transport
from foedus.transport.throttle import ThrottledLog

log = logging.getLogger("foedus.link")

#: refusals a Downlink logs per second at most (all are counted)
LOG_PER_SECOND = 25
#: the (sender, round) pairs whose messages a Downlink counts for ``per_round``; the oldest
#: are forgotten beyond this, so a sender naming ever new rounds costs bounded memory
TRACKED_PAIRS = 4096


class Uplink(Pod):
    """Publishes messages arriving on ``in`` to ``topic`` (keyed by sender, so per-sender order
    holds). ``retain`` marks each payload as the topic's current value (global models).

    When its graph stops, the runtime lets the Uplink finish what it was handed (a server's
    last "stop" must leave), however long its transport retries an unreachable broker or hub.
    Not when the actor is *cancelled* (SIGTERM, a job's timeout, Ctrl-C: the task that started
    the graph is being cancelled as it stops it): then the publish in flight, and any message
    still queued, is dropped at once with a WARNING saying it was not delivered. A transport
    retrying a peer that is gone held a cancelled actor for up to its ``reconnect_timeout``.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)
    daemon = True  # its run only watches for the end of the graph

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
        #: called with each message and its size once the transport took it: what lets a
        #: process report an update as sent, with its bytes, rather than as handed to a wire
        self.sent_listeners: list[Callable[[Message, int], None]] = []
        #: the task that started the graph: its cancellation is the actor's (see the class)
        self._owner: asyncio.Task[Any] | None = None
        self._abandon = asyncio.Event()

    async def start(self) -> None:
        self._owner = asyncio.current_task()
        self._abandon = asyncio.Event()

    async def run(self) -> None:
        """Wait for the graph to stop (the runtime cancels every ``run`` first); if the actor
        is being cancelled, abandon what is still to be published."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self._owner is not None and self._owner.cancelling():
                self._abandon.set()
            raise

    async def on_in(self, msg: Message) -> None:
        payload = encode(msg)
        topic = self.topic(msg) if callable(self.topic) else self.topic
        if self._abandon.is_set():
            self._not_delivered(msg, topic)
            return
        publish = asyncio.ensure_future(
            self.transport.publish(topic, payload, key=msg.sender, retain=self.retain))
        abandon = asyncio.ensure_future(self._abandon.wait())
        try:
            await asyncio.wait({publish, abandon}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandon.cancel()
            if not publish.done():
                publish.cancel()
                await asyncio.wait({publish}, timeout=1.0)  # let it close what it opened
        if publish.cancelled():
            if not self._abandon.is_set():  # not by us: fail this message, not the worker
                raise TransportError(f"{self.name}: the publish to {topic!r} was cancelled")
            self._not_delivered(msg, topic)
            return
        publish.result()  # its failure is the handler's
        self.bytes_out += len(payload)
        self.messages_out += 1
        for listener in self.sent_listeners:
            listener(msg, len(payload))

    def _not_delivered(self, msg: Message, topic: str) -> None:
        log.warning("%s: the %s message of round %d to %r was not delivered: the actor was "
                    "cancelled while its transport was still trying", self.name,
                    msg.kind.value, msg.header.round, topic)


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
        senders: Collection[str] | None = None, per_round: int | None = None,
    ) -> None:
        super().__init__(name or "downlink")
        if per_round is not None and (isinstance(per_round, bool)
                                      or not isinstance(per_round, int) or per_round < 1):
            raise ConfigError(f"per_round: expected an integer >= 1 or None, got {per_round!r}")
        self.transport = transport
        self.topic = topic
        self.job_id = job_id
        self.group = group
        self.max_size = max_size
        self.accept = accept
        self.senders = None if senders is None else frozenset(senders)
        self.per_round = per_round
        #: whether the subscription drops non-senders before decoding (known once started)
        self.filters_senders = False
        self.rejected: Counter[str] = Counter()
        self.skipped = 0
        self.bytes_in = 0
        self.messages_in = 0
        self._sub: Subscription | None = None
        self._seen: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._log = ThrottledLog(log, LOG_PER_SECOND)

    async def start(self) -> None:
        # Subscribe before anything runs, so no payload published after start() is missed;
        # name the senders first, so the subscription drops strangers from its first payload.
        if self.senders is not None:
            self.filters_senders = self.transport.admit_senders(self.topic, self.senders)
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
        if self.per_round is not None and not self._within_bound(msg):
            self._refuse("flood", f"more than {self.per_round} messages from "
                                  f"{msg.header.sender[:64]!r} for round {msg.header.round}")
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

    def _within_bound(self, msg: Message) -> bool:
        """Count ``msg`` for its (sender, round); False once the pair is over ``per_round``."""
        pair = (msg.header.sender, msg.header.round)
        seen = self._seen.pop(pair, 0) + 1
        self._seen[pair] = seen  # most recent last
        while len(self._seen) > TRACKED_PAIRS:
            self._seen.popitem(last=False)
        assert self.per_round is not None
        return seen <= self.per_round

    def _refuse(self, reason: str, detail: str) -> None:
        """Count a refusal and log it in one line, at most :data:`LOG_PER_SECOND` lines a
        second (the lines held back are summed up in the next one logged)."""
        self.rejected[reason] += 1
        self._log.warning("%s: rejected a payload on %r (%s): %.300s",
                          self.name, self.topic, reason, detail)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.close()
