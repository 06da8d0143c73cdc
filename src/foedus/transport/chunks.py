"""Chunking and reassembly of large payloads, shared by the Kafka and MQTT transports.

Brokers cap the size of one record (Kafka's ``max.message.bytes``) or packet (MQTT's
``max_packet_size``), while model updates are often hundreds of MB. Both transports therefore
cut a payload into chunks, each tagged with one :class:`ChunkHeader`; only the framing differs
(Kafka carries the header in a record header, MQTT as a prefix of the MQTT payload).

The header names the payload (a random 16-byte id), the chunk's index, the chunk count, the
chunk's byte offset, the payload's total length and the SHA-256 of the whole payload. The
publisher hashes chunk by chunk while the previous chunks travel (:func:`framed`), so only the
*last* chunk carries the digest; earlier ones carry :data:`NO_DIGEST`. The receiver hashes in
the same order as chunks arrive, so nobody makes a second pass over a 200 MB payload.

What a peer claims costs it what it sends (:class:`Reassembler`): a partial payload holds only
the chunks that have arrived (nothing is allocated from the announced total), and the bytes and
the number of partial payloads held are bounded per subscription and per sender; beyond a bound
the oldest partials are evicted and counted (reason ``evicted``). :meth:`ChunkHeader.unpack`
checks a header against the layout :func:`split` produces (equal chunks, the last one shorter),
so an empty chunk or one whose offset or count disagrees with its size is refused outright.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from foedus.transport.throttle import ThrottledLog

log = logging.getLogger(__name__)

#: magic, version, flags, reserved, payload id, index, count, offset, total, SHA-256 of the payload
HEADER = struct.Struct("!4sBBH16sIIQQ32s")
MAGIC = b"FDCH"
#: bumped whenever the header changes; both sides of one foedus version agree, nothing else
VERSION = 2
#: the payload is a retained value (Kafka: it gets a pointer record)
FLAG_RETAINED = 1
_KNOWN_FLAGS = FLAG_RETAINED
DIGEST_SIZE = 32
#: the digest field of every chunk but the last (the publisher hashes while sending)
NO_DIGEST = bytes(DIGEST_SIZE)
#: chunks at least this large are hashed in a worker thread (hashlib releases the GIL), so the
#: event loop keeps moving bytes meanwhile
THREAD_HASH = 256 * 1024
#: payloads at least this large are joined in a worker thread
THREAD_JOIN = 1 << 20
#: refusals logged per second and reassembler at most (all are counted)
LOG_PER_SECOND = 10


def digest(payload: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of a whole payload."""
    return hashlib.sha256(payload).digest()


async def hash_chunk(hasher: Any, data: bytes | memoryview) -> None:
    """Feed one chunk to a running SHA-256, in a thread when it is large."""
    if len(data) < THREAD_HASH:
        hasher.update(data)
    else:
        await asyncio.to_thread(hasher.update, data)


@dataclass(frozen=True)
class ChunkHeader:
    """The header of one chunk; see the module docstring."""

    msg_id: bytes
    index: int
    count: int
    offset: int
    total: int
    digest: bytes = NO_DIGEST
    flags: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.flags, 0, self.msg_id, self.index, self.count,
                           self.offset, self.total, self.digest)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, size: int) -> ChunkHeader:
        """Parse the header of a chunk carrying ``size`` data bytes and check it against the
        layout :func:`split` produces; raises ValueError naming the problem."""
        if len(raw) != HEADER.size:
            raise ValueError(f"chunk header of {len(raw)} bytes, expected {HEADER.size}")
        magic, version, flags, _res, msg_id, index, count, offset, total, dig = (
            HEADER.unpack(raw)
        )
        if magic != MAGIC:
            raise ValueError("not a foedus chunk (bad magic)")
        if version != VERSION:
            raise ValueError(f"unsupported chunk format version {version}; this build reads "
                             f"{VERSION}")
        if flags & ~_KNOWN_FLAGS:
            raise ValueError(f"unknown chunk flags {flags:#x}")
        if count < 1 or index >= count:
            raise ValueError(f"chunk index {index} out of range for {count} chunks")
        if count > max(total, 1):
            raise ValueError(f"{count} chunks for {total} bytes")
        if offset + size > total:
            raise ValueError(f"chunk at offset {offset} (+{size}) overruns total {total}")
        if total and not size:
            raise ValueError("empty chunk of a non-empty payload")
        if index < count - 1:  # a full chunk: it fixes the chunk size of the whole payload
            if offset != index * size or count != -(-total // size):
                raise ValueError(f"chunk {index} of {count} ({size} bytes at offset {offset}) "
                                 f"does not fit a {total}-byte payload")
        elif offset + size != total or (index and (offset % index or size > offset // index)):
            raise ValueError(f"last chunk {index} ({size} bytes at offset {offset}) does not "
                             f"end a {total}-byte payload")
        return cls(msg_id, index, count, offset, total, dig, flags)


def split(
    payload: bytes | bytearray | memoryview, chunk_size: int, digest: bytes = NO_DIGEST, *,
    msg_id: bytes | None = None, retained: bool = False,
) -> list[tuple[ChunkHeader, memoryview]]:
    """Cut a payload into (header, data view) pairs of at most ``chunk_size`` data bytes;
    views, not copies. Every header carries ``digest``; :func:`framed` fills the last one's."""
    view = memoryview(payload).cast("B")
    total = len(view)
    count = max(1, -(-total // chunk_size))
    mid = msg_id or uuid.uuid4().bytes
    flags = FLAG_RETAINED if retained else 0
    return [
        (ChunkHeader(mid, i, count, i * chunk_size, total, digest, flags),
         view[i * chunk_size:(i + 1) * chunk_size])
        for i in range(count)
    ]


async def framed(
    chunks: Sequence[tuple[ChunkHeader, memoryview]],
) -> AsyncIterator[tuple[ChunkHeader, memoryview]]:
    """Yield the chunks in order, hashing each before it is yielded; the last one's header
    carries the payload's SHA-256 (hashing overlaps with the chunks already in flight)."""
    hasher = hashlib.sha256()
    last = len(chunks) - 1
    for header, data in chunks:
        await hash_chunk(hasher, data)
        yield (replace(header, digest=hasher.digest()) if header.index == last else header), data


# --------------------------------------------------------------------------------------------
# reassembly


@dataclass
class Partial:
    """A payload whose chunks are arriving. ``tag`` is the transport's own bookkeeping (Kafka:
    partition and first offset; MQTT: withheld acknowledgements)."""

    sender: str
    header: ChunkHeader
    tag: Any
    chunks: list[bytes] = field(default_factory=list)  # in order, already hashed
    ahead: dict[int, bytes] = field(default_factory=dict)  # arrived before a missing one
    held: int = 0  # data bytes in chunks and ahead
    hasher: Any = field(default_factory=hashlib.sha256)
    digest: bytes = NO_DIGEST
    touched: float = field(default_factory=time.monotonic)

    @property
    def received(self) -> int:
        return len(self.chunks) + len(self.ahead)


Status = Literal["complete", "pending", "duplicate", "refused", "ignored"]


@dataclass
class Outcome:
    """What :meth:`Reassembler.add` did with a chunk. ``payload`` is set when ``complete``;
    ``partial`` is the payload the chunk belongs to (also for ``complete``)."""

    status: Status
    payload: bytes | None = None
    partial: Partial | None = None


class Reassembler:
    """Reassembles chunked payloads within a memory budget.

    * ``max_payload``: a chunk announcing a larger total is refused (``oversized``).
    * ``budget``: data bytes held in all partial payloads together; ``max_partials``: how many
      may be open at once. ``sender_budget`` and ``sender_partials`` bound the same per sender
      (``sender`` is the publisher's name, authenticated or claimed; the empty name, an anonymous
      publisher, gets only the overall bounds). A chunk that would exceed a bound first evicts
      the oldest other partials (``evicted``): a peer's claim costs it the bytes it sends.
    * ``strict_order`` (Kafka, whose partitions keep order): only chunk 0 opens a payload and a
      chunk after a missing one drops the partial (``gap``; the publisher re-sends the whole
      payload under the same id). Otherwise (MQTT, whose retained chunks may arrive in any order)
      chunks ahead of a missing one are held until it arrives.
    * ``on_drop(partial, reason)`` lets the transport release what it keeps for a partial that
      is dropped (evicted, gapped, timed out, corrupt).

    Refusals are counted in ``rejected`` (a dict the transport shares) and logged, one line each.
    """

    def __init__(
        self, *, max_payload: int, budget: int, sender_budget: int | None = None,
        max_partials: int = 1024, sender_partials: int = 8, strict_order: bool = False,
        remember_ids: int = 4096, rejected: dict[str, int] | None = None,
        on_drop: Callable[[Partial, str], None] | None = None, what: str = "",
    ) -> None:
        self.max_payload = max_payload
        self.budget = budget
        self.sender_budget = sender_budget if sender_budget is not None else max_payload
        self.max_partials = max_partials
        self.sender_partials = sender_partials
        self.strict_order = strict_order
        self.remember_ids = remember_ids
        self.rejected: dict[str, int] = rejected if rejected is not None else {}
        self.on_drop = on_drop
        self.what = what
        self.duplicates = 0
        self.held = 0  # data bytes in all partials
        self.peak_held = 0
        self._partials: OrderedDict[tuple[str, bytes], Partial] = OrderedDict()
        self._by_sender: dict[str, tuple[int, int]] = {}  # sender -> (bytes, partials)
        self._done: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._log = ThrottledLog(log, LOG_PER_SECOND)

    def __len__(self) -> int:
        return len(self._partials)

    def partials(self) -> list[Partial]:
        return list(self._partials.values())

    # -- accounting ----------------------------------------------------------------------------

    def _count(self, reason: str, detail: str) -> None:
        """Count a refusal; log it in one line, at most :data:`LOG_PER_SECOND` lines a second
        (a flood of hostile chunks must not become a flood of log lines: the rest are summed
        up in the next line logged)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._log.warning("%s: dropped (%s): %s", self.what, reason, detail)

    def refuse(self, reason: str, detail: str) -> None:
        """Count and log a refusal the transport decided on (e.g. a record from a sender that
        is not admitted), under the same log-rate bound as the reassembler's own."""
        self._count(reason, detail)

    def _charge(self, sender: str, nbytes: int, partials: int) -> None:
        self.held += nbytes
        self.peak_held = max(self.peak_held, self.held)
        b, p = self._by_sender.get(sender, (0, 0))
        b, p = b + nbytes, p + partials
        if p:
            self._by_sender[sender] = (b, p)
        else:
            self._by_sender.pop(sender, None)

    def remember(self, sender: str, msg_id: bytes) -> None:
        """Mark a payload delivered (or refused for good): its chunks are duplicates from now."""
        self._done[(sender, msg_id)] = None
        while len(self._done) > self.remember_ids:
            self._done.popitem(last=False)

    def drop(self, part: Partial, reason: str, detail: str) -> None:
        """Forget a partial payload, count it under ``reason`` and tell the transport."""
        key = (part.sender, part.header.msg_id)
        if self._partials.get(key) is not part:
            return
        del self._partials[key]
        self._charge(part.sender, -part.held, -1)
        self._count(reason, f"partial payload of {part.header.total} bytes "
                            f"({part.received}/{part.header.count} chunks): {detail}")
        part.chunks, part.ahead = [], {}
        if self.on_drop is not None:
            self.on_drop(part, reason)

    def sweep(self, timeout: float, now: float | None = None) -> None:
        """Drop partial payloads whose sender has been silent for ``timeout`` seconds."""
        now = time.monotonic() if now is None else now
        for part in list(self._partials.values()):
            if now - part.touched > timeout:
                self.drop(part, "incomplete", f"no chunk for {timeout}s (sender gone?)")

    def clear(self) -> None:
        self._partials.clear()
        self._by_sender.clear()
        self.held = 0

    def _make_room(self, part: Partial, nbytes: int, new: bool) -> None:
        """Evict the oldest other partials until ``nbytes`` more (and, if ``new``, one more
        partial) fit every bound."""
        sender = part.sender
        for victim in list(self._partials.values()):
            sb, sp = self._by_sender.get(sender, (0, 0))
            over_all = self.held + nbytes > self.budget or (
                new and len(self._partials) >= self.max_partials)
            over_sender = bool(sender) and (sb + nbytes > self.sender_budget or (
                new and sp >= self.sender_partials))
            if not (over_all or over_sender):
                return
            if victim is part or (not over_all and victim.sender != sender):
                continue
            self.drop(victim, "evicted", "over the reassembly budget"
                      + (f" of sender {sender!r}" if not over_all else ""))

    # -- adding a chunk ------------------------------------------------------------------------

    def _place(self, sender: str, h: ChunkHeader, data: bytes, tag: Any,
               ) -> tuple[Outcome, list[bytes]]:
        """Book a chunk in; returns the outcome so far and the chunks that became contiguous
        (to be hashed, in order, before :meth:`_finish`)."""
        key = (sender, h.msg_id)
        if key in self._done:
            self.duplicates += 1
            return Outcome("duplicate"), []
        if h.total > self.max_payload:
            self._count("oversized", f"{h.total} bytes > max_payload={self.max_payload}")
            return Outcome("refused"), []
        part = self._partials.get(key)
        new = part is None
        if part is None:
            if self.strict_order and h.index != 0:
                return Outcome("ignored"), []  # the rest of a payload begun before our start
            part = Partial(sender, h, tag)
        elif (part.header.count, part.header.total) != (h.count, h.total) or (
            NO_DIGEST not in (h.digest, part.digest) and h.digest != part.digest
        ):
            self._count("inconsistent", "a chunk disagrees with its payload's first chunk")
            return Outcome("refused", partial=part), []
        nxt = len(part.chunks)
        if h.index < nxt or h.index in part.ahead:
            self.duplicates += 1
            return Outcome("duplicate", partial=part), []
        if self.strict_order and h.index > nxt:
            self.drop(part, "gap", f"chunk {h.index} follows chunk {nxt - 1}")
            return Outcome("refused"), []
        self._make_room(part, len(data), new)
        if new:
            self._partials[key] = part
            self._charge(sender, 0, 1)
        if h.digest != NO_DIGEST:
            part.digest = h.digest
        part.touched = time.monotonic()
        self._charge(sender, len(data), 0)
        part.held += len(data)
        if h.index != nxt:
            part.ahead[h.index] = data
            return Outcome("pending", partial=part), []
        ready = [data]
        part.chunks.append(data)
        while len(part.chunks) in part.ahead:
            more = part.ahead.pop(len(part.chunks))
            part.chunks.append(more)
            ready.append(more)
        return Outcome("pending", partial=part), ready

    def _finish(self, part: Partial) -> Outcome:
        """After hashing: complete the payload if every chunk is in."""
        h = part.header
        if len(part.chunks) < h.count:
            return Outcome("pending", partial=part)
        key = (part.sender, h.msg_id)
        del self._partials[key]
        self._charge(part.sender, -part.held, -1)
        self.remember(part.sender, h.msg_id)
        if part.held != h.total:
            self._count("length", f"{part.held} bytes received, {h.total} declared")
            return self._failed(part, "length")
        if part.hasher.digest() != part.digest:
            self._count("corrupt", f"SHA-256 mismatch on a {h.total}-byte payload")
            return self._failed(part, "corrupt")
        return Outcome("complete", partial=part)

    def _failed(self, part: Partial, reason: str) -> Outcome:
        part.chunks = []
        if self.on_drop is not None:
            self.on_drop(part, reason)
        return Outcome("refused", partial=part)

    def add_now(self, sender: str, h: ChunkHeader, data: bytes, tag: Any = None) -> Outcome:
        """Add one chunk, hashing and joining on the calling thread (chunks are small)."""
        outcome, ready = self._place(sender, h, data, tag)
        if outcome.partial is None or outcome.status != "pending":
            return outcome
        part = outcome.partial
        for chunk in ready:
            part.hasher.update(chunk)
        if not ready:
            return outcome
        done = self._finish(part)
        if done.status == "complete":
            done.payload = _join(part)
        return done

    async def add(self, sender: str, h: ChunkHeader, data: bytes, tag: Any = None) -> Outcome:
        """Add one chunk; large chunks are hashed, and large payloads joined, in a thread."""
        outcome, ready = self._place(sender, h, data, tag)
        if outcome.partial is None or outcome.status != "pending":
            return outcome
        part = outcome.partial
        for chunk in ready:
            await hash_chunk(part.hasher, chunk)
        if not ready:
            return outcome
        done = self._finish(part)
        if done.status == "complete":
            done.payload = (_join(part) if part.header.total < THREAD_JOIN
                            else await asyncio.to_thread(_join, part))
        return done


def _join(part: Partial) -> bytes:
    chunks, part.chunks = part.chunks, []
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


__all__ = [
    "DIGEST_SIZE", "FLAG_RETAINED", "HEADER", "MAGIC", "NO_DIGEST", "VERSION", "ChunkHeader",
    "Outcome", "Partial", "Reassembler", "digest", "framed", "hash_chunk",
    "split",
]
