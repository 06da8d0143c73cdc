"""Floods on the gRPC and HTTPS hubs: one peer cannot hold more than its share, and honest
actors' rounds still complete while it tries.

Each protocol gets one real hub with mutual TLS on a loopback port and deliberately small
:class:`PeerLimits`. The attacker holds a valid certificate of its own (``participant``): an
insider gone rogue, or an outsider with a stolen certificate; without one the TLS handshake
refuses it before any of this. It opens connections, subscriptions and uploads beyond its
limits, trickles a request header and an upload (slow-loris), and sends headers far beyond the
protocol bounds; meanwhile a server and three clients run rounds through the same hub. Each
refusal must be counted under its reason in ``hub.stats``, and every round must complete.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from foedus.certs import DeploymentCerts
from foedus.core.errors import TransportError
from foedus.transport.base import Subscription, Transport
from foedus.transport.hub import Hub, Publication
from foedus.transport.hub.limits import LimitExceeded, PeerLimits
from tests.transport.hub_fixtures import certs

__all__ = ["certs"]  # the fixture, used by name

LIMITS = PeerLimits(max_connections=6, max_subscriptions=4, max_publishes=2, max_topics=32,
                    max_groups=2, request_timeout=1.5, upload_idle_s=1.0)
HONEST = ("client-000", "client-001", "client-002")
ATTACKER = "participant"


async def honest_rounds(connect: Callable[[str], Awaitable[Transport]], rounds: int = 2,
                        deadline: float = 20.0) -> None:
    """A server and three clients exchange ``rounds`` model/update rounds through the hub,
    each round within ``deadline`` seconds."""
    server = await connect("client-000")  # the hub checks no sender here: any honest cert
    clients = [await connect(c) for c in HONEST]
    updates = await server.subscribe("job.updates", group="server")
    models = [await c.subscribe("job.model") for c in clients]
    try:
        for rnd in range(rounds):
            await server.publish("job.model", f"model {rnd}".encode(), retain=True)

            async def answer(i: int, sub: Subscription, rnd: int = rnd) -> None:
                assert await anext(sub) == f"model {rnd}".encode()
                await clients[i].publish("job.updates", f"{rnd}:{i}".encode(), key=HONEST[i])

            async def collect() -> set[bytes]:
                return {await anext(updates) for _ in HONEST}

            _, got = await asyncio.wait_for(asyncio.gather(
                asyncio.gather(*(answer(i, s) for i, s in enumerate(models))), collect()),
                deadline)
            assert got == {f"{rnd}:{i}".encode() for i in range(3)}
    finally:
        for t in (server, *clients):
            await t.close()


async def tls_stream(port: int, certs: DeploymentCerts, who: str = ATTACKER,
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = certs.client_tls(who).client_context()
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                         server_hostname="127.0.0.1")


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True once the hub has closed the connection (EOF or reset), without a response."""
    try:
        data = await asyncio.wait_for(reader.read(1024), timeout)
    except (ConnectionError, ssl.SSLError):
        return True
    return data == b""


# ---- the hub's bookkeeping, without a network ------------------------------------------------
def test_a_peer_holds_at_most_its_subscriptions_and_gets_them_back_when_it_closes() -> None:
    hub = Hub(limits=LIMITS)
    held = [hub.open("t", peer="ip:10.0.0.9") for _ in range(LIMITS.max_subscriptions)]
    with pytest.raises(LimitExceeded, match="subscriptions"):
        hub.open("t", peer="ip:10.0.0.9")
    hub.open("t", peer="ip:10.0.0.1")  # another peer is unaffected
    held[0].close()
    hub.open("t", peer="ip:10.0.0.9")  # released on close
    assert hub.stats["refused_subscriptions"] == 1


def test_throwaway_topics_are_forgotten_and_groups_per_peer_are_bounded() -> None:
    hub = Hub(limits=LIMITS)
    for i in range(10 * LIMITS.max_topics):  # an outsider using ever new topics
        hub.open(f"junk-{i}", peer="ip:10.0.0.9").close()
        hub.publish(Publication(f"sent-{i}", b"x", None, False, None))
    assert hub.topics() == 0
    hub.open("a", group="g1", peer="ip:10.0.0.9").close()
    hub.open("b", group="g2", peer="ip:10.0.0.9").close()
    with pytest.raises(LimitExceeded, match="groups"):
        hub.open("c", group="g3", peer="ip:10.0.0.9")
    assert hub.topics() == 2  # the durable groups' topics stay; the refused one is gone
    assert hub.stats["refused_groups"] == 1


# ---- HTTPS ------------------------------------------------------------------------------------
@pytest.fixture
async def https_hub(certs: DeploymentCerts) -> AsyncIterator[Any]:
    from foedus.transport.https import HttpsHub

    hub = await HttpsHub("127.0.0.1", 0, certs.server_tls(), limits=LIMITS).start()
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.mark.integration
async def test_https_hub_bounds_every_flood_and_honest_rounds_complete(
    https_hub: Any, certs: DeploymentCerts,
) -> None:
    from foedus.transport.https import HttpsTransport

    stats = https_hub.hub.stats

    async def connect(who: str) -> Transport:
        return HttpsTransport(https_hub.url, tls=certs.client_tls(who), poll_s=1.0)

    # connections: beyond max_connections they are dropped as the handshake completes; the
    # ones held trickle a header, and are closed after request_timeout (slow-loris)
    flood = 3 * LIMITS.max_connections
    streams = await asyncio.gather(*(tls_stream(https_hub.port, certs) for _ in range(flood)))
    for _, writer in streams:
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: hub\r\n")
    closed = await asyncio.gather(*(closed_by_peer(r) for r, _ in streams))
    assert all(closed)  # every one: refused at once, or held and then closed as too slow
    assert stats["refused_connections"] + stats["refused_slow_request"] == flood
    assert stats["refused_connections"] >= flood - 2 * LIMITS.max_connections
    assert https_hub.hub.peers.held(f"cn:{ATTACKER}", "connections") == 0

    # headers far beyond aiohttp's 8 KiB bounds: 400 at once, nothing buffered
    reader, writer = await tls_stream(https_hub.port, certs)
    writer.write(b"GET /v1/info HTTP/1.1\r\nHost: hub\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n")
    assert (await reader.readline()).split()[1] == b"400"
    writer.close()

    # uploads: two trickling uploads are held, a third is refused; the two are cut when idle
    uploads = [await tls_stream(https_hub.port, certs) for _ in range(LIMITS.max_publishes + 1)]
    for _, writer in uploads:
        writer.write(b"PUT /v1/publish?topic=t HTTP/1.1\r\nHost: hub\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
    statuses = sorted([(await r.readline()).split()[1] for r, _ in uploads])
    assert statuses == [b"408", b"408", b"429"]
    assert stats["refused_publishes"] == 1 and stats["refused_slow_upload"] == 2

    # subscriptions: the attacker's fifth is refused (429), its four stay open meanwhile
    attacker = await connect(ATTACKER)
    held = [await attacker.subscribe(f"flood-{i}") for i in range(LIMITS.max_subscriptions)]
    with pytest.raises(TransportError, match="429"):
        await attacker.subscribe("flood-x")
    assert stats["refused_subscriptions"] == 1

    # while the attacker still holds its subscriptions, honest rounds complete
    await honest_rounds(connect)
    assert len(held) == LIMITS.max_subscriptions
    await attacker.close()


# ---- gRPC -------------------------------------------------------------------------------------
@pytest.fixture
async def grpc_hub(certs: DeploymentCerts) -> AsyncIterator[Any]:
    from foedus.transport.grpc import GrpcHub

    hub = await GrpcHub("127.0.0.1", 0, certs.server_tls(), limits=LIMITS).start()
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.mark.integration
async def test_grpc_hub_bounds_every_flood_and_honest_rounds_complete(
    grpc_hub: Any, certs: DeploymentCerts,
) -> None:
    import grpc

    from foedus.transport.grpc import GrpcTransport

    stats = grpc_hub.hub.stats

    async def connect(who: str) -> Transport:
        return GrpcTransport(grpc_hub.address, tls=certs.client_tls(who))

    # a connection that never completes its TLS handshake is closed (slow-loris)
    reader, writer = await asyncio.open_connection("127.0.0.1", grpc_hub.port)
    assert await closed_by_peer(reader)
    writer.close()

    tls = certs.client_tls(ATTACKER)
    channel = grpc.aio.secure_channel(grpc_hub.address, grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes()))  # type: ignore[union-attr]
    try:
        # metadata far beyond 16 KiB: refused by grpc core before any handler runs
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary("/foedus.Hub/Info")(b"", metadata=[("x-junk", "a" * 100_000)])

        # subscriptions: the attacker's fifth stream is refused, its four stay open
        attacker = await connect(ATTACKER)
        held = [await attacker.subscribe(f"flood-{i}") for i in range(LIMITS.max_subscriptions)]
        with pytest.raises(TransportError, match="RESOURCE_EXHAUSTED"):
            await attacker.subscribe("flood-x")
        assert stats["refused_subscriptions"] == 1

        # uploads: two trickling ones are held and cut when idle, a third is refused at once
        calls = []
        for _ in range(LIMITS.max_publishes + 1):
            call = channel.stream_unary("/foedus.Hub/Publish")(metadata=[
                ("foedus-topic-bin", b"t"), ("foedus-size", "1000")])
            await call.write(b"x" * 10)
            calls.append(call)
        codes = []
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            codes.append(failed.value.code().name)
        assert sorted(codes) == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"]
        assert stats["refused_publishes"] == 1 and stats["refused_slow_upload"] == 2

        # while the attacker still holds its subscriptions, honest rounds complete
        await honest_rounds(connect)
        assert len(held) == LIMITS.max_subscriptions
        await attacker.close()
    finally:
        await channel.close()


def test_a_job_file_sets_a_hosted_hubs_limits_and_a_wrong_key_is_one_line(
    certs: DeploymentCerts,
) -> None:
    from foedus.core.errors import ConfigError
    from foedus.transport.hub import Hosting

    serve = {"ca": str(certs.ca), "cert": str(certs.server_cert), "key": str(certs.server_key)}
    hosting = Hosting.from_params(serve, None, None, False, None,
                                  limits={"max_subscriptions": 2, "request_timeout": 5})
    assert hosting.limits == PeerLimits(max_subscriptions=2, request_timeout=5)
    with pytest.raises(ConfigError, match="got 'max_subs'; allowed: max_connections"):
        Hosting.from_params(serve, None, None, False, None, limits={"max_subs": 2})
    with pytest.raises(ConfigError, match="max_topics must be a positive number, got 0"):
        PeerLimits(max_topics=0)
    with pytest.raises(ConfigError, match="need serve"):
        Hosting.from_params(None, None, None, False, None, limits={"max_topics": 9})
