"""The Kafka transport (``transport: {type: kafka}``), on aiokafka.

How the Transport contract maps onto Kafka (details and operator notes in
``docs/transports-kafka.md``):

* **Topics.** A foedus topic is a Kafka topic of the same name (``foedus.<job>.model``,
  ``foedus.<job>.updates``). A retained topic also has a small compacted *pointer topic*
  ``<topic>__retained``. Missing topics are created with the configs they need
  (:meth:`KafkaTransport.topic_configs`); with ``create_topics=False`` a missing topic is an error
  that names the exact topic and configs to create.
* **Large payloads.** Kafka brokers refuse records above ``max.message.bytes`` (1 MB by default),
  while model updates are often hundreds of MB. Every payload is cut into chunks of at most
  ``chunk_size`` bytes (default 1,000,000: fits the default limit with room for headers). Each
  chunk is one record whose Kafka header ``foedus-chunk`` carries the chunk header of
  :mod:`foedus.transport.chunks` (shared with MQTT): the payload's id, the chunk's index, the
  chunk count, offset and the total length; the last chunk's header also carries the SHA-256
  of the whole payload, which both sides compute chunk by chunk while the transfer goes on
  (no extra pass over a 200 MB payload before sending or after receiving). All chunks of a
  payload share one record key (the sender, else the payload id), so they land in one partition,
  in order. The subscriber reassembles them with that module's ``Reassembler`` (in strict order:
  a gap drops the partial), checks length and digest before handing the payload out, ignores
  duplicated chunks and payloads it has already delivered (message ids), drops partial payloads
  whose sender went silent for ``partial_timeout`` seconds, holds only the chunks that arrived
  (never what a header announces), bounds partial payloads per subscription (``max_buffer``,
  ``max_partials``) and per record key (``max_payload``) by evicting the oldest, and bounds the
  bytes it holds in partial and undelivered payloads by ``max_buffer`` (beyond it, it stops
  fetching until the consumer catches up: backpressure).
* **Who may write.** :meth:`KafkaTransport.admit_senders` makes subscriptions drop records
  whose key (the sender) is not admitted before anything else is done with them
  (``unknown_sender``).
* **Hostile records** are counted in the subscription's ``rejected`` under a reason, logged in
  one line (at most ten lines a second) and skipped (the committed position moves past them,
  so a restarted reader does not see them again); an unexpected error while handling one
  record is counted as ``reader-error`` the same way and never ends the subscription.
* **retain=True.** After the payload's chunks are acknowledged, a pointer (partition, offset of the
  first chunk, payload id) is written to the pointer topic. A new subscriber reads the pointer
  topic's last record and replays just that payload from the data topic before live payloads, so
  a client that was offline receives the current global model first.
* **Groups.** A subscription with ``group`` uses Kafka's committed offsets for that consumer group
  (partitions are assigned manually: no join or rebalance delay). On first use the group's
  position is committed at the end of the log, so payloads published while it is away are kept
  for it. Offsets are committed when the iterator advances past a payload (while the reader keeps
  up; with a backlog at most every :data:`COMMIT_EVERY` seconds) and on a clean close; the
  committed offset never passes the first chunk of a payload that is still being reassembled or
  not yet consumed, so a crash re-delivers at most what was not yet consumed (at least once).
* **Records without a ``foedus-chunk`` header** (written by a plain Kafka producer) are delivered
  as single-record payloads, so foedus interoperates with existing producers.
* **Security.** TLS and mutual TLS through :class:`foedus.transport.tls.TLSConfig` (or ``tls:
  true`` for the system trust store); SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 credentials.
  Settings may come as a URL: ``kafka://host:9092,host2:9092?sasl_mechanism=PLAIN&...`` or
  ``kafkas://...`` (TLS).
* **Reconnects.** aiokafka reconnects with ``retry_backoff_ms`` backoff. On top of it, a publish
  that fails with a retriable error (broker down, request timed out, leader moving) is re-sent
  whole under the same payload id (receivers drop what they already have) with exponential
  backoff until ``reconnect_timeout``; so is one the broker failed with an unnamed server error
  (``UNKNOWN_SERVER_ERROR``, e.g. Tansu on S3 when two producers race for one offset), at most
  :data:`SERVER_ERROR_RETRIES` times; the fetch loop retries the same way and keeps its
  position. So a job survives a broker restart (with durable broker storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import ssl
import struct
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from foedus.core.errors import ConfigError, TransportClosed, TransportError, require
from foedus.transport.base import Subscription, Transport, check_flags, transports
from foedus.transport.chunks import ChunkHeader, Partial, Reassembler, framed, split
from foedus.transport.tls import TLSConfig

#: the extra this module's plugins need (`pip install foedus[kafka]`), for `foedus plugins`
REQUIRES_EXTRA = "kafka"

log = logging.getLogger(__name__)

#: the Kafka record header that marks a foedus chunk
CHUNK_HEADER = "foedus-chunk"
#: the pointer topic's record: version, partition, offset of the first chunk, payload id
POINTER = struct.Struct("!BIQ16s")
POINTER_VERSION = 1
POINTER_SUFFIX = "__retained"
#: Apache Kafka's default ``message.max.bytes`` / ``max.message.bytes`` (a whole record batch)
KAFKA_DEFAULT_MAX_MESSAGE = 1_048_588
#: data bytes per chunk by default: a chunk record plus its headers stays below the default limit
DEFAULT_CHUNK_SIZE = 1_000_000
#: room for a record's key, headers and the batch framing on top of the chunk's data
RECORD_OVERHEAD = 16 * 1024
_TOPIC = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC = 249
_SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_URL_KEYS = ("ca", "cert", "key", "sasl_mechanism", "sasl_username", "sasl_password",
             "client_id")
_ERR_TOPIC_EXISTS = 36
#: seconds between offset commits while payloads are queued (see ``_commit``)
COMMIT_EVERY = 0.05
#: how many times one publish re-sends after the broker answered UNKNOWN_SERVER_ERROR (-1)
SERVER_ERROR_RETRIES = 5


def _outage(exc: BaseException, errors: Any) -> bool:
    """True for errors a broker outage or failover causes (worth retrying after a backoff)."""
    return bool(getattr(exc, "retriable", False)) or isinstance(
        exc, errors.KafkaTimeoutError | errors.KafkaConnectionError)


def _server_error(exc: BaseException, errors: Any) -> bool:
    """True for Kafka's UNKNOWN_SERVER_ERROR: the broker failed this request without naming a
    reason. aiokafka does not retry it, but it is often transient: Tansu on S3 storage answers
    it to the loser when two producers race for one offset (its conditional PUT of the batch
    fails), and the loser's record is *not* stored. Since a re-sent payload keeps its id and
    receivers drop what they already have, re-sending is safe; a few times, so a broker that
    fails every produce still fails the publish quickly."""
    return isinstance(exc, errors.UnknownError)


class _HeldRecords:
    """aiokafka's log records while one of our clients connects (see
    :meth:`KafkaTransport._start_client`)."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self.open = True


#: the records of the client connecting in this task, if any (a context variable: several
#: transports of one process connect at once, each holding only its own client's records)
_HELD: contextvars.ContextVar[_HeldRecords | None] = contextvars.ContextVar(
    "foedus_kafka_held", default=None)
#: the aiokafka loggers a connection attempt writes to
_CONNECT_LOGGERS = ("aiokafka", "aiokafka.conn")


class _HoldWhileConnecting(logging.Filter):
    """Holds aiokafka's records back while a client of ours connects: if it fails, foedus's
    error says why in one line (aiokafka printed its own ERROR above it); if it connects,
    they are passed on as aiokafka logged them (foedus said nothing of them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        held = _HELD.get()
        if held is None or not held.open:
            return True
        held.records.append(record)
        return False


_HOLD = _HoldWhileConnecting()

#: an aiokafka warning or error repeated within this many seconds is held back (and counted)
REPEAT_WINDOW_S = 30.0
#: the aiokafka loggers that repeat themselves while a broker is down
_OUTAGE_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher",
                   "aiokafka.producer.sender", "aiokafka.consumer.group_coordinator")


class _QuietRepeats(logging.Filter):
    """While a broker is down aiokafka logs every failed reconnect, metadata update, fetch and
    produce: ~90 lines a second (370 in a 4 s outage, measured), above foedus's own "retrying"
    lines. Each distinct warning or error passes once per :data:`REPEAT_WINDOW_S`; the next
    copy to pass says how many were held back, so nothing goes unseen."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (passed at, held since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = time.monotonic()
        passed, held = self._seen.get(key, (None, 0))
        if passed is not None and now - passed < REPEAT_WINDOW_S:
            self._seen[key] = (passed, held + 1)
            return False
        if len(self._seen) > 1024:  # messages that vary (ids, offsets): forget the old ones
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last " \
                         f"{REPEAT_WINDOW_S:g}s)"
            record.args = None
        return True


_QUIET = _QuietRepeats()


def _install_log_filters() -> None:
    """Put :class:`_HoldWhileConnecting` and :class:`_QuietRepeats` on aiokafka's loggers
    (once; a filter acts only on records made by the logger that carries it)."""
    for name in _CONNECT_LOGGERS:
        if _HOLD not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_HOLD)
    for name in _OUTAGE_LOGGERS:
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)


class _Backoff:
    """Exponential backoff (``first`` doubling up to 5 s) within an overall time budget."""

    def __init__(self, first_ms: int, budget: float) -> None:
        self.delay = first_ms / 1000
        self.deadline = time.monotonic() + budget

    async def wait(self) -> bool:
        """Sleep before the next attempt; False when the budget is spent (give up)."""
        if time.monotonic() + self.delay > self.deadline:
            return False
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 5.0)
        return True


def check_topic(topic: str) -> str:
    """Kafka topic names: 1-249 of ``[A-Za-z0-9._-]`` (the pointer suffix must still fit)."""
    if not isinstance(topic, str) or not topic:
        raise TransportError(f"topic must be a non-empty string, got {topic!r}")
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise TransportError(
            f"topic {topic!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-')"
        )
    if len(topic) + len(POINTER_SUFFIX) > _MAX_TOPIC:
        raise TransportError(
            f"topic {topic!r} is too long: at most {_MAX_TOPIC - len(POINTER_SUFFIX)} characters"
        )
    return topic


def parse_url(url: str) -> tuple[list[str], bool, dict[str, str]]:
    """``kafka[s]://host:port[,host:port]?key=value`` -> (servers, tls, settings)."""
    parts = urlsplit(url)
    if parts.scheme not in ("kafka", "kafkas"):
        raise ConfigError(f"bootstrap URL {url!r}: scheme must be kafka:// or kafkas:// (TLS)")
    servers = [s for s in parts.netloc.split(",") if s]
    if not servers:
        raise ConfigError(f"bootstrap URL {url!r} names no host:port")
    settings: dict[str, str] = {}
    for k, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        if k not in _URL_KEYS:
            raise ConfigError(
                f"bootstrap URL: unknown setting {k!r}; valid settings: {', '.join(_URL_KEYS)}"
            )
        settings[k] = unquote(values[-1])
    return servers, parts.scheme == "kafkas", settings


# --------------------------------------------------------------------------------------------
# receiving


@dataclass
class _Ready:
    payload: bytes
    partition: int
    msg_id: bytes  # a foreign (non-foedus) record gets one made of its position


class _KafkaSubscription(Subscription):
    """One consumer, manually assigned to every partition of a topic."""

    def __init__(self, owner: KafkaTransport, topic: str, group: str | None,
                 consumer: Any) -> None:
        self.owner = owner
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self.tps: list[Any] = []
        self.live_from: dict[int, int] = {}  # partition -> first offset delivered live
        self.read_upto: dict[int, int] = {}  # partition -> next offset after the last processed
        self.pending: dict[int, dict[bytes, int]] = {}  # partition -> {payload id: start offset}
        self.committed: dict[int, int] = {}
        self.replay_id: bytes | None = None
        self.rejected: dict[str, int] = {}
        #: partial payloads; a partial's tag is (partition, offset of its first chunk, replay)
        self.reassembly = Reassembler(
            max_payload=owner.max_payload, budget=owner.max_buffer,
            sender_budget=owner.max_payload, max_partials=owner.max_partials,
            strict_order=True, remember_ids=owner.remember_ids, rejected=self.rejected,
            on_drop=self._dropped, what=f"Kafka topic {topic!r}",
        )
        self.queued = 0  # bytes in undelivered payloads
        self.peak_buffered = 0
        self._queue: deque[_Ready] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._handed: _Ready | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._last_commit = 0.0  # when the group's position was last committed (monotonic)
        self._skip_rest: set[int] = set()  # partitions re-positioned mid-batch
        self.foreign = 0
        #: the record keys (senders) admitted; None: every key (see
        #: :meth:`KafkaTransport.admit_senders`)
        self.senders: frozenset[str] | None = owner.admitted.get(topic)

    # -- setup ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Assign partitions, settle the start position, arrange the retained replay, and start
        fetching. Returns once every payload published from now on will be delivered."""
        tp_cls = require("aiokafka", "kafka").TopicPartition
        partitions = await self.owner._partitions(self.topic)
        self.tps = [tp_cls(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        ends = await self.consumer.end_offsets(self.tps)
        fresh: dict[Any, int] = {}
        for tp in self.tps:
            start = None if self.group is None else await self.consumer.committed(tp)
            if start is None:
                start = fresh[tp] = ends[tp]
            self.consumer.seek(tp, start)
            self.live_from[tp.partition] = start
            self.read_upto[tp.partition] = start
            self.pending[tp.partition] = {}
        if self.group is not None and fresh:
            # make the group's position durable now: what is published from here on is kept
            await self.consumer.commit(fresh)
            self.committed.update({tp.partition: o for tp, o in fresh.items()})
        if len(fresh) == len(self.tps):  # not resuming: start with the current value
            await self._arrange_replay()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _arrange_replay(self) -> None:
        pointer = await self.owner._latest_pointer(self.topic)
        if pointer is None:
            return
        partition, offset, msg_id = pointer
        live = self.live_from.get(partition)
        if live is None or offset >= live:
            return  # published after our start: it arrives live
        tp = next(tp for tp in self.tps if tp.partition == partition)
        first = (await self.consumer.beginning_offsets([tp]))[tp]
        if offset < first:
            log.warning("Kafka topic %r: the retained payload at offset %d was deleted "
                        "(log starts at %d); a new subscriber gets no current value",
                        self.topic, offset, first)
            return
        self.replay_id = msg_id
        self.consumer.seek(tp, offset)

    # -- the fetch loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        errors = require("aiokafka.errors", "kafka")
        backoff: _Backoff | None = None
        try:
            while True:
                try:
                    batches = await self.consumer.getmany(
                        timeout_ms=self.owner.poll_ms, max_records=64
                    )
                except errors.KafkaError as exc:
                    if not _outage(exc, errors):
                        raise
                    # the broker is away (restart, failover): keep the position and retry
                    backoff = backoff or _Backoff(self.owner.retry_backoff_ms,
                                                  self.owner.reconnect_timeout)
                    log.warning("Kafka topic %r: fetch failed (%s); retrying", self.topic, exc)
                    if not await backoff.wait():
                        raise
                    continue
                backoff = None
                self._skip_rest.clear()
                for tp, records in batches.items():
                    for record in records:
                        await self._wait_room()
                        await self._take(tp.partition, record)
                        if tp.partition in self._skip_rest:
                            break  # re-positioned: the rest of this batch is fetched again
                self._sweep()
        except asyncio.CancelledError:
            raise
        except errors.KafkaError as exc:
            self._error = TransportError(f"Kafka topic {self.topic!r}: consumer failed: {exc}")
            log.error("%s", self._error)
            self._ready.set()
        except Exception as exc:  # a bug must surface to the reader, not vanish in a task
            self._error = exc
            self._ready.set()

    @property
    def buffered(self) -> int:
        """Bytes in partial and undelivered payloads (what ``max_buffer`` bounds)."""
        return self.reassembly.held + self.queued

    @property
    def duplicates(self) -> int:
        """Chunks and payloads received again (producer retries, redelivery)."""
        return self.reassembly.duplicates

    async def _wait_room(self) -> None:
        """Backpressure: hold fetching while over budget and there is something to consume."""
        while self.buffered > self.owner.max_buffer:
            if not self._queue:
                self._relieve()
                return
            self._room.clear()
            await self._room.wait()

    def _relieve(self) -> None:
        """Over budget with nothing consumable: drop the oldest partial rather than deadlock."""
        if len(self.reassembly):
            self.reassembly.drop(self.reassembly.partials()[0], "buffer-full",
                                 f"max_buffer={self.owner.max_buffer} reached with nothing "
                                 "consumable")

    def _reject(self, reason: str, detail: str) -> None:
        """Count a refused record; logged like the reassembler's refusals (at most ten lines
        a second: a flood of hostile records must not become a flood of log lines)."""
        self.reassembly.refuse(reason, f"a record: {detail}")

    def _dropped(self, part: Partial, reason: str) -> None:
        """A partial payload was dropped: its first chunk no longer holds the commit back.

        Not remembered as done: the sender may re-send the whole payload under the same id (a
        publish retried after a failed chunk whose successors were stored: a gap here), and that
        copy must still be accepted. Stray later chunks of the dropped copy start nothing (only
        chunk 0 opens a payload)."""
        partition, _start, _replay = part.tag
        self.pending[partition].pop(part.header.msg_id, None)

    async def _take(self, partition: int, record: Any) -> None:
        """Handle one record; whatever it holds, the fetch loop goes on (the record is counted,
        and its offset is passed, so a restarted reader does not see it again)."""
        try:
            await self._on_record(partition, record)
        except Exception as exc:
            self._reject("reader-error", f"record at offset {getattr(record, 'offset', '?')}: "
                                         f"{type(exc).__name__}: {exc}")

    async def _on_record(self, partition: int, record: Any) -> None:
        offset: int = record.offset
        live = offset >= self.live_from[partition]
        if live:
            self.read_upto[partition] = max(self.read_upto[partition], offset + 1)
        key = record.key
        sender = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else ""
        if self.senders is not None and sender not in self.senders:
            if live:
                self.reassembly.refuse("unknown_sender", f"a record keyed {sender[:64]!r}, "
                                                         "not a participant")
            return
        raw = next((v for k, v in record.headers or () if k == CHUNK_HEADER), None)
        value: bytes = record.value or b""
        if raw is None:
            if live:  # a plain producer's record: one payload as it is
                self.foreign += 1
                fid = b"foreign:%d:%d" % (partition, offset)
                self.pending[partition][fid] = offset
                self._deliver(_Ready(value, partition, fid))
            return
        try:
            h = ChunkHeader.unpack(bytes(raw), len(value))
        except ValueError as exc:
            if live:
                self._reject("malformed", str(exc))
            return
        if not live and h.msg_id != self.replay_id:
            return  # replaying the retained payload: skip everything else before our start
        outcome = await self.reassembly.add(sender, h, value, (partition, offset, not live))
        part = outcome.partial
        if outcome.status == "pending" and part is not None and h.index == 0 and live:
            self.pending[partition].setdefault(h.msg_id, offset)
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        if outcome.status != "complete" or part is None or outcome.payload is None:
            return
        part_partition, _start, replay = part.tag
        if replay:
            self.replay_id = None
            self._skip_to_live(part_partition)
        if h.count == 1 and live:
            self.pending[partition].setdefault(h.msg_id, offset)
        self._deliver(_Ready(outcome.payload, part_partition, h.msg_id))

    def _skip_to_live(self, partition: int) -> None:
        """After the retained payload, jump over older records straight to the live start."""
        tp = next(tp for tp in self.tps if tp.partition == partition)
        self.consumer.seek(tp, self.live_from[partition])
        self._skip_rest.add(partition)

    def _deliver(self, ready: _Ready) -> None:
        self._queue.append(ready)
        self.queued += len(ready.payload)
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        self._ready.set()

    def _sweep(self) -> None:
        """Drop partial payloads whose sender has been silent for ``partial_timeout``."""
        if len(self.reassembly):
            self.reassembly.sweep(self.owner.partial_timeout)

    # -- committing ----------------------------------------------------------------------------

    def _consumed(self, ready: _Ready) -> None:
        self.pending[ready.partition].pop(ready.msg_id, None)

    def positions(self) -> dict[int, int]:
        """Per partition: the offset a group may commit (nothing before it is still needed)."""
        return {p: min(self.pending[p].values(), default=self.read_upto[p])
                for p in self.read_upto}

    async def _commit(self) -> None:
        """Commit the group's position. A commit is a round trip to the broker: the reader
        commits after every payload only while it is keeping up (nothing more is queued), and
        at most every :data:`COMMIT_EVERY` seconds while a backlog waits. Awaiting one per
        payload capped a reader at a few hundred payloads a second, and a flood of 1,000 junk
        records a second starved every honest one behind it. A crash re-delivers what was
        consumed since the last commit (at least once, as always)."""
        if self.group is None or not self.tps:
            return
        self._last_commit = time.monotonic()
        errors = require("aiokafka.errors", "kafka")
        positions = self.positions()
        offsets = {tp: positions[tp.partition] for tp in self.tps
                   if positions[tp.partition] > self.committed.get(tp.partition, -1)}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except errors.KafkaError as exc:
            # not fatal: the next commit carries the position; a crash meanwhile re-delivers
            log.warning("Kafka topic %r: commit for group %r failed (%s); will retry",
                        self.topic, self.group, exc)
            return
        self.committed.update({tp.partition: o for tp, o in offsets.items()})

    # -- the Subscription API ------------------------------------------------------------------

    async def __anext__(self) -> bytes:
        if self._handed is not None:
            self._consumed(self._handed)
            self._handed = None
            if not self._closed and (not self._queue or time.monotonic() - self._last_commit
                                     >= COMMIT_EVERY):
                await self._commit()
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        ready = self._queue.popleft()
        self.queued -= len(ready.payload)
        self._room.set()
        self._handed = ready
        return ready.payload

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._handed is not None:
            self._consumed(self._handed)
            self._handed = None
        await self._commit()
        self._queue.clear()
        self.queued = 0
        self.reassembly.clear()
        self._ready.set()
        self._room.set()
        await self.owner._stop_client(self.consumer)
        self.owner._subs.discard(self)


# --------------------------------------------------------------------------------------------
# the transport


@transports.register("kafka")
class KafkaTransport(Transport):
    """Topics on a Kafka cluster (Apache Kafka, Redpanda, Confluent Cloud, Tansu).

    ``bootstrap`` is ``"host:port[,host:port]"``, a list of them, or a URL
    ``kafka[s]://host:port,...?ca=...&sasl_mechanism=...`` (see :func:`parse_url`). See the
    module docstring for how topics, chunks, retained payloads and groups map onto Kafka.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str | Sequence[str] = "127.0.0.1:9092",
        *,
        tls: TLSConfig | Mapping[str, Any] | bool | None = None,
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        client_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_payload: int = 1024**3,
        max_buffer: int = 2 * 1024**3,
        max_partials: int = 1024,
        partial_timeout: float = 120.0,
        create_topics: bool = True,
        partitions: int = 1,
        replication_factor: int = 1,
        retention_ms: int | None = None,
        topic_configs: Mapping[str, str] | None = None,
        publish_window: int = 32,
        request_timeout: float = 30.0,
        reconnect_timeout: float = 300.0,
        retry_backoff_ms: int = 200,
        poll_ms: int = 200,
        remember_ids: int = 4096,
    ) -> None:
        require("aiokafka", "kafka")
        servers, url_tls, settings = self._servers(bootstrap)
        tls, sasl_mechanism, sasl_username, sasl_password, client_id = self._merge_url(
            settings, url_tls, tls, sasl_mechanism, sasl_username, sasl_password, client_id
        )
        for label, value, low in [
            ("chunk_size", chunk_size, 1024), ("max_payload", max_payload, 1),
            ("partitions", partitions, 1), ("replication_factor", replication_factor, 1),
            ("publish_window", publish_window, 1), ("retry_backoff_ms", retry_backoff_ms, 1),
            ("poll_ms", poll_ms, 1), ("remember_ids", remember_ids, 16),
            ("max_partials", max_partials, 1),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{label} must be an integer >= {low}, got {value!r}")
        if max_buffer < max_payload:
            raise ConfigError(
                f"max_buffer ({max_buffer}) must be at least max_payload ({max_payload}),"
                " or a payload of the maximum size could never be reassembled"
            )
        for label, fvalue in [("partial_timeout", partial_timeout),
                              ("request_timeout", request_timeout),
                              ("reconnect_timeout", reconnect_timeout)]:
            if not isinstance(fvalue, int | float) or fvalue <= 0:
                raise ConfigError(f"{label} must be a positive number, got {fvalue!r}")
        if retention_ms is not None and (not isinstance(retention_ms, int) or retention_ms < -1):
            raise ConfigError(f"retention_ms must be an integer >= -1, got {retention_ms!r}")
        self.servers = servers
        self.tls = tls
        if isinstance(tls, TLSConfig):
            tls.check_files()  # a missing certificate is a config error, now
        if sasl_mechanism is not None:
            if sasl_mechanism not in _SASL:
                raise ConfigError(
                    f"sasl_mechanism {sasl_mechanism!r} is not supported; use one of {_SASL}"
                )
            if not sasl_username or sasl_password is None:
                raise ConfigError(f"sasl_mechanism {sasl_mechanism} needs sasl_username and "
                                  "sasl_password")
        self.sasl_mechanism = sasl_mechanism
        self.sasl_username = sasl_username
        self.sasl_password = sasl_password
        self.client_id = client_id or "foedus"
        self.chunk_size = chunk_size
        self.max_payload = max_payload
        self.max_buffer = max_buffer
        self.max_partials = max_partials
        self.partial_timeout = float(partial_timeout)
        check_flags(create_topics=create_topics)  # bool("false") would be True
        self.create_topics = create_topics
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.retention_ms = retention_ms
        self.extra_topic_configs = {str(k): str(v) for k, v in (topic_configs or {}).items()}
        self.publish_window = publish_window
        self.request_timeout = float(request_timeout)
        self.reconnect_timeout = float(reconnect_timeout)
        self.retry_backoff_ms = retry_backoff_ms
        self.poll_ms = poll_ms
        self.remember_ids = remember_ids
        self._producer: Any = None
        self._admin: Any = None
        self._lookup: Any = None
        self._lock: asyncio.Lock | None = None
        self._lookup_lock: asyncio.Lock | None = None
        self._known_topics: set[str] = set()
        self._subs: set[_KafkaSubscription] = set()
        self._closed = False
        #: per topic, the record keys its new subscriptions admit (see :meth:`admit_senders`)
        self.admitted: dict[str, frozenset[str]] = {}

    def admit_senders(self, topic: str, senders: Collection[str] | None) -> bool:
        """Subscriptions to ``topic`` made from now on drop records whose key (the publisher's
        name: foedus keys every record by its sender) is not one of ``senders`` before anything
        else is done with them: no chunk header is parsed, nothing is reassembled, hashed or
        handed out. Counted as ``unknown_sender`` (logged at most ten lines a second). The key
        is the publisher's claim: this stops a non-participant's flood cheaply, not a forger
        using a participant's name (that takes ``sign``, or broker ACLs on who may write)."""
        if senders is None:
            self.admitted.pop(topic, None)
        else:
            self.admitted[topic] = frozenset(senders)
        return True

    # -- configuration -------------------------------------------------------------------------

    @staticmethod
    def _servers(bootstrap: str | Sequence[str]) -> tuple[list[str], bool, dict[str, str]]:
        if isinstance(bootstrap, str) and "://" in bootstrap:
            return parse_url(bootstrap)
        items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
        servers = [s.strip() for s in items if isinstance(s, str) and s.strip()]
        if not servers:
            raise ConfigError(f"bootstrap must name at least one host:port, got {bootstrap!r}")
        for s in servers:
            host, _, port = s.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"bootstrap server {s!r} is not host:port")
        return servers, False, {}

    @staticmethod
    def _merge_url(
        settings: dict[str, str], url_tls: bool, tls: Any, mechanism: str | None,
        username: str | None, password: str | None, client_id: str | None,
    ) -> tuple[TLSConfig | bool | None, str | None, str | None, str | None, str | None]:
        """URL settings fill in what was not given explicitly; both at once is an error."""
        explicit = {"sasl_mechanism": mechanism, "sasl_username": username,
                    "sasl_password": password, "client_id": client_id}
        for k, v in explicit.items():
            if v is not None and k in settings:
                raise ConfigError(f"{k} is given both in the bootstrap URL and as a parameter")
        tls_keys = {k: settings[k] for k in ("ca", "cert", "key") if k in settings}
        if tls_keys:
            if tls is not None:
                raise ConfigError("TLS is given both in the bootstrap URL and as a parameter")
            if "ca" not in tls_keys:
                raise ConfigError("bootstrap URL: cert/key need ca (the CA of the brokers)")
            tls = TLSConfig(tls_keys["ca"], tls_keys.get("cert"), tls_keys.get("key"))
        elif url_tls and tls is None:
            tls = True
        if tls_keys and not url_tls:
            raise ConfigError("bootstrap URL: certificate settings need the kafkas:// scheme")
        tls_cfg = TLSConfig.from_mapping(tls) if isinstance(tls, Mapping) else tls
        if tls_cfg is not None and not isinstance(tls_cfg, TLSConfig | bool):
            raise ConfigError(f"tls must be a mapping, true or false, got {type(tls).__name__}")
        return (
            tls_cfg or None,
            mechanism or settings.get("sasl_mechanism"),
            username or settings.get("sasl_username"),
            password if password is not None else settings.get("sasl_password"),
            client_id or settings.get("client_id"),
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None or self.tls is False:
            return None
        if self.tls is True:
            ctx = ssl.create_default_context()
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            return ctx
        assert isinstance(self.tls, TLSConfig)
        return self.tls.client_context()

    def client_options(self) -> dict[str, Any]:
        """Connection settings shared by the producer, consumers and admin client."""
        ctx = self._ssl_context()
        protocol = {(False, False): "PLAINTEXT", (True, False): "SSL",
                    (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL"}[
            (ctx is not None, self.sasl_mechanism is not None)]
        options: dict[str, Any] = {
            "bootstrap_servers": self.servers, "client_id": self.client_id,
            "security_protocol": protocol, "request_timeout_ms": int(self.request_timeout * 1000),
            "retry_backoff_ms": self.retry_backoff_ms,
        }
        if ctx is not None:
            options["ssl_context"] = ctx
        if self.sasl_mechanism is not None:
            options.update(sasl_mechanism=self.sasl_mechanism,
                           sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options

    def topic_configs(self, *, pointer: bool = False) -> dict[str, str]:
        """The configs a missing topic is created with (also what the docs tell operators)."""
        if pointer:
            return {"cleanup.policy": "compact"}
        configs = {"max.message.bytes": str(max(KAFKA_DEFAULT_MAX_MESSAGE,
                                                self.chunk_size + RECORD_OVERHEAD))}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.extra_topic_configs)
        return configs

    def __repr__(self) -> str:
        return (f"KafkaTransport({','.join(self.servers)}, tls={self.tls is not None}, "
                f"sasl={self.sasl_mechanism})")

    # -- clients -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("the Kafka transport is closed")

    def _locks(self) -> tuple[asyncio.Lock, asyncio.Lock]:
        if self._lock is None or self._lookup_lock is None:
            self._lock, self._lookup_lock = asyncio.Lock(), asyncio.Lock()
        return self._lock, self._lookup_lock

    async def _start_client(self, client: Any, what: str) -> Any:
        """Start an aiokafka client; a failure is one :class:`TransportError` that says why
        (aiokafka's own records of the attempt go to DEBUG; see :class:`_HoldWhileConnecting`)."""
        errors = require("aiokafka.errors", "kafka")
        _install_log_filters()
        held = _HeldRecords()
        token = _HELD.set(held)
        try:
            await client.start()
        except (errors.KafkaError, OSError, ssl.SSLError) as exc:
            held.open = False
            for record in held.records:
                log.debug("aiokafka (%s): %s", record.name, record.getMessage())
            reasons = dict.fromkeys(r.getMessage() for r in held.records
                                    if r.levelno >= logging.WARNING)
            held.records.clear()
            await self._stop_client(client)
            raise TransportError(
                f"cannot connect the Kafka {what} to {','.join(self.servers)}"
                f"{' (TLS)' if self.tls else ''}: {'; '.join(reasons) or exc}"
            ) from exc
        finally:
            held.open = False
            _HELD.reset(token)
            # connected (or cancelled): foedus says nothing of these, so they are passed on
            for record in held.records:
                logging.getLogger(record.name).handle(record)
        return client

    @staticmethod
    async def _stop_client(client: Any) -> None:
        try:
            if hasattr(client, "stop"):
                await client.stop()
            else:
                await client.close()
        except Exception as exc:  # closing is best effort; the connection may already be gone
            log.debug("closing a Kafka client failed: %s", exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled: that is the caller's, not aiokafka's
            # aiokafka's own: a consumer whose broker is gone stops its fetch task in its
            # backoff, and the task's CancelledError leaks out of stop() before stop() closes
            # the consumer's connections: close them as stop() would have
            log.debug("closing a Kafka client: aiokafka let its own cancellation out")
            inner = getattr(client, "_client", None)
            if inner is not None:
                with contextlib.suppress(Exception):
                    await inner.close()

    async def _get_producer(self) -> Any:
        lock, _ = self._locks()
        async with lock:
            self._check_open()
            if self._producer is None:
                aiokafka = require("aiokafka", "kafka")
                self._producer = await self._start_client(aiokafka.AIOKafkaProducer(
                    **self.client_options(), acks="all", linger_ms=0,
                    max_request_size=self.chunk_size + RECORD_OVERHEAD,
                ), "producer")
            return self._producer

    async def _get_admin(self) -> Any:
        if self._admin is None:
            admin_mod = require("aiokafka.admin", "kafka")
            self._admin = await self._start_client(
                admin_mod.AIOKafkaAdminClient(**self.client_options()), "admin client"
            )
        return self._admin

    def _new_consumer(self, group: str | None) -> Any:
        aiokafka = require("aiokafka", "kafka")
        fetch = max(8 * 1024 * 1024, 4 * (self.chunk_size + RECORD_OVERHEAD))
        return aiokafka.AIOKafkaConsumer(
            **self.client_options(), group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=100,
            max_partition_fetch_bytes=fetch, fetch_max_bytes=max(64 * 1024 * 1024, fetch),
        )

    # -- topics --------------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, *, pointer: bool = False) -> None:
        """Create ``topic`` with :meth:`topic_configs` unless it exists (cached per topic)."""
        if topic in self._known_topics:
            return
        lock, _ = self._locks()
        async with lock:
            if topic in self._known_topics:
                return
            admin = await self._get_admin()
            errors = require("aiokafka.errors", "kafka")
            configs = self.topic_configs(pointer=pointer)
            parts = 1 if pointer else self.partitions
            if not self.create_topics:
                if topic not in set(await admin.list_topics()):
                    raise TransportError(self._missing_topic(topic, parts, configs))
                self._known_topics.add(topic)
                return
            admin_mod = require("aiokafka.admin", "kafka")
            new = admin_mod.NewTopic(topic, parts, self.replication_factor,
                                     topic_configs=configs)
            try:
                response = await admin.create_topics([new])
            except errors.KafkaError as exc:
                raise TransportError(f"cannot create Kafka topic {topic!r}: {exc}. "
                                     + self._missing_topic(topic, parts, configs)) from exc
            for _name, code, *rest in response.topic_errors:
                if code not in (0, _ERR_TOPIC_EXISTS):
                    detail = rest[0] if rest else ""
                    raise TransportError(
                        f"cannot create Kafka topic {topic!r} (error {code}: {detail}). "
                        + self._missing_topic(topic, parts, configs)
                    )
            self._known_topics.add(topic)

    def _missing_topic(self, topic: str, partitions: int, configs: Mapping[str, str]) -> str:
        flags = " ".join(f"--config {k}={v}" for k, v in configs.items())
        return (f"Create it, e.g.: kafka-topics.sh --create --topic {topic} --partitions "
                f"{partitions} --replication-factor {self.replication_factor} {flags}")

    async def delete_topics(self, *topics: str) -> None:
        """Delete topics and their retained pointers (a finished job's data). Brokers that keep
        logs in memory (Tansu's memory storage) need this: they do not enforce retention."""
        self._check_open()
        names = [check_topic(t) for t in topics]
        admin = await self._get_admin()
        existing = set(await admin.list_topics())
        doomed = [n for t in names for n in (t, t + POINTER_SUFFIX) if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
        self._known_topics.difference_update(doomed)

    async def _partitions(self, topic: str) -> set[int]:
        """The topic's partition ids (creating the topic if needed); a freshly created topic
        may take a moment to appear in every broker's metadata."""
        await self.ensure_topic(topic)
        admin = await self._get_admin()
        deadline = time.monotonic() + self.request_timeout
        while True:
            described = await admin.describe_topics([topic])
            parts = {p["partition"] for t in described if t.get("topic") == topic
                     and t.get("error_code", 0) == 0 for p in t.get("partitions", ())}
            if parts:
                return parts
            if time.monotonic() > deadline:
                raise TransportError(f"Kafka topic {topic!r} has no partitions in the metadata "
                                     f"after {self.request_timeout}s")
            await asyncio.sleep(0.1)

    async def _latest_pointer(self, topic: str) -> tuple[int, int, bytes] | None:
        """The retained payload of ``topic``: (partition, first offset, payload id) or None."""
        aiokafka = require("aiokafka", "kafka")
        ptr_topic = topic + POINTER_SUFFIX
        _, lookup_lock = self._locks()
        async with lookup_lock:
            if self._lookup is None:
                self._lookup = await self._start_client(self._new_consumer(None), "consumer")
            c = self._lookup
            if ptr_topic not in self._known_topics:
                if ptr_topic not in await c.topics():
                    return None
                self._known_topics.add(ptr_topic)
            tp = aiokafka.TopicPartition(ptr_topic, 0)
            c.assign([tp])
            end = (await c.end_offsets([tp]))[tp]
            if end == 0:
                return None
            c.seek(tp, end - 1)
            deadline = time.monotonic() + self.request_timeout
            while time.monotonic() < deadline:
                batch = await c.getmany(tp, timeout_ms=self.poll_ms)
                for record in batch.get(tp, ()):
                    if record.offset == end - 1:
                        return self._parse_pointer(topic, record.value)
            raise TransportError(f"could not read the retained pointer of {topic!r}")

    @staticmethod
    def _parse_pointer(topic: str, value: bytes | None) -> tuple[int, int, bytes] | None:
        if not value or len(value) != POINTER.size:
            log.warning("Kafka topic %r: ignoring a malformed retained pointer", topic)
            return None
        version, partition, offset, msg_id = POINTER.unpack(value)
        if version != POINTER_VERSION:
            log.warning("Kafka topic %r: retained pointer version %d unknown", topic, version)
            return None
        return partition, offset, msg_id

    # -- the Transport API ---------------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, key: str | None = None, retain: bool = False
    ) -> None:
        self._check_open()
        check_topic(topic)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TransportError(f"payload must be bytes, got {type(payload).__name__}")
        size = memoryview(payload).nbytes
        if size > self.max_payload:
            raise TransportError(
                f"payload of {size} bytes exceeds max_payload={self.max_payload}"
            )
        producer = await self._get_producer()
        errors = require("aiokafka.errors", "kafka")
        chunks = split(payload, self.chunk_size, retained=retain)
        record_key = key.encode() if key is not None else chunks[0][0].msg_id
        backoff = _Backoff(self.retry_backoff_ms, self.reconnect_timeout)
        server_errors = 0
        while True:
            try:
                await self.ensure_topic(topic)
                await self._send_payload(producer, topic, chunks, record_key, retain)
                return
            except errors.KafkaError as exc:
                # an outage or a transient broker failure: send the whole payload again under
                # the same id; the receivers ignore the chunks (or the payload) they already have
                retry = _outage(exc, errors)
                if not retry and _server_error(exc, errors):
                    server_errors += 1
                    retry = server_errors <= SERVER_ERROR_RETRIES
                if retry and not self._closed and await backoff.wait():
                    log.warning("publish to Kafka topic %r failed (%s); retrying", topic, exc)
                    continue
                raise TransportError(f"publish to Kafka topic {topic!r} failed: {exc}") from exc

    async def _send_payload(self, producer: Any, topic: str,
                            chunks: list[tuple[ChunkHeader, memoryview]], record_key: bytes,
                            retain: bool) -> None:
        """Send every chunk, keeping up to ``publish_window`` unacknowledged (the producer
        batches and pipelines them, in order), then the retained pointer."""
        window: deque[asyncio.Future[Any]] = deque()
        first: asyncio.Future[Any] | None = None
        try:
            async for header, data in framed(chunks):  # hashed while earlier chunks travel
                fut = await producer.send(topic, data, key=record_key,
                                          headers=[(CHUNK_HEADER, header.pack())])
                first = first or fut
                window.append(fut)
                if len(window) >= self.publish_window:
                    await window.popleft()  # bounds what the producer holds for this payload
            await asyncio.gather(*window)
        except BaseException:
            for fut in window:
                fut.cancel()
            raise
        if retain:
            assert first is not None
            meta = first.result()
            ptr_topic = topic + POINTER_SUFFIX
            await self.ensure_topic(ptr_topic, pointer=True)
            await (await producer.send(
                ptr_topic,
                POINTER.pack(POINTER_VERSION, meta.partition, meta.offset, chunks[0][0].msg_id),
                key=b"retained",
            ))

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        self._check_open()
        check_topic(topic)
        if group is not None and (not isinstance(group, str) or not group):
            raise TransportError(f"group must be a non-empty string, got {group!r}")
        consumer = await self._start_client(self._new_consumer(group), "consumer")
        sub = _KafkaSubscription(self, topic, group, consumer)
        errors = require("aiokafka.errors", "kafka")
        try:
            await sub.start()
        except errors.KafkaError as exc:
            await self._stop_client(consumer)
            raise TransportError(f"cannot subscribe to Kafka topic {topic!r}: {exc}") from exc
        except BaseException:
            await self._stop_client(consumer)
            raise
        if self._closed:  # closed while we were connecting
            await sub.close()
            raise TransportClosed("the Kafka transport is closed")
        self._subs.add(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.close()
        for client in (self._producer, self._lookup, self._admin):
            if client is not None:
                await self._stop_client(client)
        self._producer = self._lookup = self._admin = None
