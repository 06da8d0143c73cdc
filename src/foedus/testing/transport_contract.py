"""The Transport contract as a test suite: what every transport, built-in or third-party, passes.

:mod:`foedus.transport.base` states the contract in words; this module states it as tests, so a
new transport is correct when they pass unchanged. It imports pytest (a test dependency, not a
core one), which is why it lives in its own module: ``import foedus.testing`` never needs pytest.

To run it against your transport, subclass :class:`TransportContract` in a test module (the class
name must start with ``Test``) and override the ``make_transport`` fixture. It yields an async
factory; each call opens a *new* client of the same deployment, as separate processes would (a
broker on loopback, a shared in-memory bus...), and the fixture closes them all afterwards::

    class TestMyTransport(TransportContract):
        payload_sizes = (*TransportContract.payload_sizes, 16 * 1024 * 1024)

        @pytest.fixture
        async def make_transport(self):
            opened = []

            async def make():
                opened.append(MyTransport("127.0.0.1:1234"))
                return opened[-1]

            yield make
            for t in opened:
                await t.close()

The tests are ``async def``: run them with pytest-asyncio in ``asyncio_mode = "auto"`` (as
foedus's own suite does), or mark them in your conftest. ``payload_sizes`` lists the sizes that
must round-trip bit-exact; add sizes above your broker's own message limit to prove chunking.
:func:`take` and :func:`topic` are there for your transport's own extra tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from foedus.core.errors import TransportClosed
from foedus.transport.base import Subscription, Transport

#: what ``make_transport`` yields: an async factory of new clients of one deployment
MakeTransport = Callable[[], Awaitable[Transport]]


def topic() -> str:
    """A topic name no other test uses, so tests on a shared broker never see each other."""
    return f"contract-{uuid.uuid4().hex[:10]}"


async def take(sub: Subscription, n: int, timeout: float = 20.0) -> list[bytes]:
    """The next ``n`` payloads of ``sub``; fails after ``timeout`` seconds instead of hanging."""

    async def collect() -> list[bytes]:
        out = []
        async for payload in sub:
            out.append(payload)
            if len(out) == n:
                break
        return out

    return await asyncio.wait_for(collect(), timeout)


class TransportContract:
    """Behaviour every transport shares; subclasses override the ``make_transport`` fixture."""

    #: sizes that must round-trip; networked transports add one above their broker's limit
    payload_sizes: tuple[int, ...] = (0, 1, 1000, 3 * 1024 * 1024)

    @pytest.fixture
    def make_transport(self) -> MakeTransport:
        """Override me: an async factory of new clients of one deployment (see the module)."""
        pytest.fail(f"{type(self).__name__} must override the make_transport fixture "
                    "(see foedus.testing.transport_contract)")

    async def test_delivers_payloads_in_order(self, make_transport: MakeTransport) -> None:
        pub, sub_t = await make_transport(), await make_transport()
        t = topic()
        sub = await sub_t.subscribe(t)
        payloads = [f"m{i}".encode() for i in range(20)]
        for p in payloads:
            await pub.publish(t, p, key="a")
        assert await take(sub, 20) == payloads

    async def test_payload_sizes_round_trip_bit_exact(self, make_transport: MakeTransport) -> None:
        pub, sub_t = await make_transport(), await make_transport()
        t = topic()
        sub = await sub_t.subscribe(t)
        payloads = [bytes((i * 7 + n) % 256 for i in range(min(n, 256))) * (n // 256 or 1)
                    for n in self.payload_sizes]
        payloads = [p[:n].ljust(n, b"x") for p, n in zip(payloads, self.payload_sizes, strict=True)]
        for p in payloads:
            await pub.publish(t, p, key="a")
        assert await take(sub, len(payloads), timeout=60) == payloads

    async def test_every_subscriber_gets_every_payload(self, make_transport: MakeTransport) -> None:
        pub, a, b = await make_transport(), await make_transport(), await make_transport()
        t = topic()
        sub_a, sub_b = await a.subscribe(t), await b.subscribe(t)
        await pub.publish(t, b"one")
        await pub.publish(t, b"two")
        assert await take(sub_a, 2) == [b"one", b"two"]
        assert await take(sub_b, 2) == [b"one", b"two"]

    async def test_topics_are_isolated(self, make_transport: MakeTransport) -> None:
        pub, sub_t = await make_transport(), await make_transport()
        t1, t2 = topic(), topic()
        sub = await sub_t.subscribe(t1)
        await pub.publish(t2, b"elsewhere")
        await pub.publish(t1, b"here")
        assert await take(sub, 1) == [b"here"]

    async def test_late_subscriber_gets_retained_payload(
        self, make_transport: MakeTransport
    ) -> None:
        pub, late = await make_transport(), await make_transport()
        t = topic()
        await pub.publish(t, b"old model", retain=True)
        await pub.publish(t, b"current model", retain=True)
        sub = await late.subscribe(t)
        assert await take(sub, 1) == [b"current model"]
        await pub.publish(t, b"next model", retain=True)
        assert await take(sub, 1) == [b"next model"]

    async def test_group_resumes_after_reconnect(self, make_transport: MakeTransport) -> None:
        pub = await make_transport()
        t, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
        first = await make_transport()
        sub = await first.subscribe(t, group=group)
        await pub.publish(t, b"u1", key="c1")
        await pub.publish(t, b"u2", key="c1")
        assert await take(sub, 2) == [b"u1", b"u2"]
        await sub.close()
        await first.close()
        await pub.publish(t, b"u3", key="c1")  # published while the group is away
        second = await make_transport()
        resumed = await second.subscribe(t, group=group)
        assert await take(resumed, 1) == [b"u3"]

    async def test_closed_subscription_ends_iteration(self, make_transport: MakeTransport) -> None:
        sub_t = await make_transport()
        sub = await sub_t.subscribe(topic())
        await sub.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(sub.__anext__(), 10)

    async def test_closed_transport_refuses_use(self, make_transport: MakeTransport) -> None:
        t = await make_transport()
        await t.close()
        with pytest.raises(TransportClosed):
            await t.publish(topic(), b"x")
        with pytest.raises(TransportClosed):
            await t.subscribe(topic())


__all__ = ["MakeTransport", "TransportContract", "take", "topic"]
