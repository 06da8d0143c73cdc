"""The chunking Kafka and MQTT share: one header, and a reassembler whose memory is what the
peers actually sent, bounded per subscription and per sender."""

from __future__ import annotations

import asyncio

import pytest

from foedus.transport.chunks import (
    HEADER,
    NO_DIGEST,
    ChunkHeader,
    Reassembler,
    digest,
    framed,
    split,
)


def chunked(payload: bytes, size: int) -> list[tuple[ChunkHeader, bytes]]:
    """What a publisher sends: the last chunk carries the payload's SHA-256."""

    async def run() -> list[tuple[ChunkHeader, bytes]]:
        return [(h, bytes(d)) async for h, d in framed(split(payload, size))]

    return asyncio.run(run())


def test_the_header_is_80_bytes_and_round_trips() -> None:
    [(h, data)] = chunked(b"abc", 1024)
    assert HEADER.size == 80
    assert ChunkHeader.unpack(h.pack(), len(data)) == h
    assert h.digest == digest(b"abc")


def test_only_the_last_chunk_carries_the_digest() -> None:
    parts = chunked(bytes(range(250)) * 10, 1000)
    assert [h.digest == NO_DIGEST for h, _ in parts] == [True, True, False]


@pytest.mark.parametrize(("header", "size", "reason"), [
    (ChunkHeader(b"x" * 16, 0, 4, 0, 4000), 0, "empty chunk"),
    (ChunkHeader(b"x" * 16, 0, 4, 0, 4000), 10, "does not fit"),  # 10-byte chunks: 400 of them
    (ChunkHeader(b"x" * 16, 1, 4, 999, 4000), 1000, "does not fit"),
    (ChunkHeader(b"x" * 16, 3, 4, 3000, 4000), 999, "does not end"),
    (ChunkHeader(b"x" * 16, 3, 4, 2000, 4000), 2000, "does not end"),
    (ChunkHeader(b"x" * 16, 4, 4, 0, 4000), 1000, "out of range"),
    (ChunkHeader(b"x" * 16, 0, 1, 0, 3, flags=0x80), 3, "flags"),
])
def test_a_header_must_fit_the_data_it_comes_with(header: ChunkHeader, size: int,
                                                   reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ChunkHeader.unpack(header.pack(), size)


def test_chunks_in_any_order_reassemble_and_a_bad_digest_is_corrupt() -> None:
    payload = bytes(range(256)) * 20
    parts = chunked(payload, 1000)
    r = Reassembler(max_payload=10_000, budget=10_000)
    outcomes = [r.add_now("", h, d) for h, d in reversed(parts)]
    assert outcomes[-1].payload == payload and r.held == 0
    assert r.add_now("", *parts[0]).status == "duplicate"  # delivered ids are remembered
    tampered = chunked(payload, 1000)
    tampered[1] = (tampered[1][0], bytes(1000))
    for h, d in tampered:
        last = r.add_now("", h, d)
    assert last.status == "refused" and r.rejected == {"corrupt": 1}


def test_a_claim_costs_what_was_sent_not_what_was_announced() -> None:
    r = Reassembler(max_payload=2**40, budget=2**40, max_partials=10)
    for i in range(100):
        r.add_now("", ChunkHeader(i.to_bytes(16, "big"), 0, 2**30, 0, 2**30), b"x")
    assert len(r) == 10 and r.held == 10  # ten partials of one byte: not ten GiB
    assert r.rejected == {"evicted": 90}


def test_the_subscription_budget_evicts_the_oldest_partial() -> None:
    r = Reassembler(max_payload=3000, budget=4000)
    for i in range(3):
        r.add_now("", ChunkHeader(bytes([i]) * 16, 0, 3, 0, 3000), bytes(1000))
    r.add_now("", ChunkHeader(bytes([0]) * 16, 1, 3, 1000, 3000), bytes(1000))
    r.add_now("", ChunkHeader(bytes([2]) * 16, 1, 3, 1000, 3000), bytes(1000))
    # 5000 bytes would not fit 4000: the oldest other partial (id 0... is growing) went first
    assert r.held <= 4000 and r.rejected == {"evicted": 1}


def test_one_sender_cannot_crowd_out_the_others() -> None:
    r = Reassembler(max_payload=1000, budget=10_000, max_partials=100, sender_partials=2)
    assert r.add_now("alice", ChunkHeader(b"h" * 16, 0, 2, 0, 1000), bytes(500)).status == (
        "pending")
    for i in range(5):
        r.add_now("mallory", ChunkHeader(bytes([i]) * 16, 0, 2, 0, 1000), bytes(500))
    assert sum(p.sender == "mallory" for p in r.partials()) == 2
    assert r.rejected == {"evicted": 3}
    done = r.add_now("alice", ChunkHeader(b"h" * 16, 1, 2, 500, 1000, digest(bytes(1000))),
                     bytes(500))
    assert done.status == "complete" and done.payload == bytes(1000)


def test_in_strict_order_a_gap_drops_the_partial_and_a_resend_completes() -> None:
    dropped: list[str] = []
    r = Reassembler(max_payload=10_000, budget=10_000, strict_order=True,
                    on_drop=lambda part, reason: dropped.append(reason))
    payload = bytes(range(250)) * 16
    parts = chunked(payload, 1000)
    assert r.add_now("k", *parts[1]).status == "ignored"  # a payload begun before our start
    r.add_now("k", *parts[0])
    assert r.add_now("k", *parts[2]).status == "refused"
    assert dropped == ["gap"] and r.held == 0
    outcomes = [r.add_now("k", h, d) for h, d in parts]
    assert outcomes[-1].payload == payload


def test_silent_senders_partials_are_swept() -> None:
    r = Reassembler(max_payload=10_000, budget=10_000)
    h = ChunkHeader(b"s" * 16, 0, 2, 0, 2000)
    r.add_now("", h, bytes(1000))
    r.sweep(60.0, now=r.partials()[0].touched + 61)
    assert len(r) == 0 and r.held == 0 and r.rejected == {"incomplete": 1}


def test_oversized_claims_are_refused_before_anything_is_held() -> None:
    r = Reassembler(max_payload=100, budget=100)
    assert r.add_now("", ChunkHeader(b"o" * 16, 0, 2, 0, 2000), bytes(1000)).status == "refused"
    assert r.rejected == {"oversized": 1} and r.held == 0
