"""The hub behind the gRPC and HTTPS transports: retention, durable groups and bounded memory,
tested directly (no network) because both protocol adapters share exactly this logic."""

from __future__ import annotations

import pytest

from foedus.core.errors import TransportClosed, TransportError
from foedus.transport.hub import Hub, Publication, Refused, require_sender_identity
from tests.transport.hub_fixtures import update_from


def pub(topic: str, payload: bytes, *, retain: bool = False, identity: str | None = None,
        key: str | None = None) -> Publication:
    return Publication(topic, payload, key, retain, identity)


async def test_cursor_sees_retained_value_then_new_payloads_in_order() -> None:
    hub = Hub()
    hub.publish(pub("t", b"old", retain=True))
    hub.publish(pub("t", b"current", retain=True))
    cursor = hub.open("t")
    hub.publish(pub("t", b"a"))
    hub.publish(pub("t", b"b"))
    got = [(await cursor.next(timeout=1)) for _ in range(3)]
    assert [p for _, p in got] == [b"current", b"a", b"b"]  # type: ignore[misc]
    assert await cursor.next(timeout=0.01) is None


async def test_log_keeps_nothing_that_no_cursor_or_group_needs() -> None:
    hub = Hub()
    for i in range(10):
        hub.publish(pub("t", bytes(1000), retain=i == 9))
    assert hub._topics["t"].log_bytes == 0  # only the retained value survives, outside the log
    assert hub._topics["t"].retained is not None


async def test_group_resumes_after_last_acknowledged_payload_and_redelivers_the_rest() -> None:
    hub = Hub()
    cursor = hub.open("t", "g")
    for p in (b"u1", b"u2", b"u3"):
        hub.publish(pub("t", p))
    first = await cursor.next(timeout=1)
    await cursor.next(timeout=1)  # handed out but never acknowledged (a crash)
    assert first is not None
    cursor.commit(first[0])
    cursor.close()
    resumed = hub.open("t", "g")
    assert [(await resumed.next(timeout=1))[1] for _ in range(2)] == [b"u2", b"u3"]  # type: ignore[index]


async def test_memory_bound_fails_a_lagging_cursor_loudly() -> None:
    hub = Hub(max_topic_bytes=3000)
    slow = hub.open("t")
    for _ in range(5):
        hub.publish(pub("t", bytes(1000)))
    assert hub._topics["t"].log_bytes <= 3000
    with pytest.raises(TransportError, match="fell behind"):
        await slow.next(timeout=1)
    assert hub.stats["cursors_fell_behind"] == 1


async def test_memory_bound_counts_payloads_a_departed_group_lost() -> None:
    hub = Hub(max_topic_bytes=2000)
    hub.open("t", "g").close()
    for i in range(5):
        hub.publish(pub("t", bytes([i]) * 1000))
    resumed = hub.open("t", "g")
    got = [(await resumed.next(timeout=1))[1][0] for _ in range(2)]  # type: ignore[index]
    assert got == [3, 4]
    assert hub.stats["group_payloads_lost"] == 3


async def test_oversized_payload_is_refused() -> None:
    hub = Hub(max_payload=10)
    with pytest.raises(TransportError, match="max_payload=10"):
        hub.publish(pub("t", bytes(11)))


async def test_closing_the_hub_ends_waiting_cursors() -> None:
    hub = Hub()
    cursor = hub.open("t")
    hub.close()
    with pytest.raises(TransportClosed):
        await cursor.next(timeout=1)


async def test_sender_identity_hook_accepts_own_name_and_aliases_only() -> None:
    check = require_sender_identity({"foedus server": "server"})
    check(pub("t", update_from("client-000"), identity="client-000"))
    check(pub("t", update_from("server"), identity="foedus server"))
    with pytest.raises(Refused, match="does not match"):
        check(pub("t", update_from("client-001"), identity="client-000"))
    with pytest.raises(Refused, match="no client certificate"):
        check(pub("t", update_from("client-000"), identity=None))
