"""A stopping hub lingers until its subscribers have left (``linger`` / ``linger_s``).

The hub lives in the job leader's process, but the job's end travels through it after the
leader is done: an edge relays the root's "stop" to its clients on the edge's topic. These tests
show the hub still serves that relay while it lingers, and closes as soon as the last subscriber
has left rather than after the whole bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foedus.certs import DeploymentCerts
from foedus.core.errors import ConfigError
from foedus.testing import wait_until
from foedus.testing.transport_contract import take, topic
from foedus.transport.grpc import GrpcHub, GrpcTransport
from foedus.transport.https import HttpsHub, HttpsTransport
from foedus.transport.hub import Hub, Publication
from foedus.transport.hub.hosting import Hosting
from tests.transport.hub_fixtures import certs  # noqa: F401  (fixture)

LINGER_S = 60.0  # far longer than the test may take: it must end when the subscribers leave


async def test_linger_ends_when_the_last_subscriber_leaves_or_at_its_bound() -> None:
    hub = Hub()
    assert await hub.linger(0.0)  # nobody subscribed: nothing to wait for
    cursor = hub.open("t")
    assert not await hub.linger(0.05)  # a subscriber that stays: the bound ends the wait
    waiting = asyncio.create_task(hub.linger(LINGER_S))
    await wait_until(lambda: hub.draining, what="the hub lingers")
    hub.publish(Publication("t", b"relayed", None, False, None))  # still served meanwhile
    assert await cursor.next(timeout=1.0) == (0, b"relayed")
    cursor.close()
    assert await asyncio.wait_for(waiting, 10)


def _hub_and_clients(kind: str, certs: DeploymentCerts) -> tuple[Any, Any]:  # noqa: F811
    tls = certs.server_tls(require_client_cert=True)
    if kind == "grpc":
        return (GrpcHub("127.0.0.1", 0, tls, linger=LINGER_S),
                lambda hub, who: GrpcTransport(hub.address, tls=certs.client_tls(who)))
    return (HttpsHub("127.0.0.1", 0, tls, linger=LINGER_S),
            lambda hub, who: HttpsTransport(hub.url, tls=certs.client_tls(who)))


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["grpc", "https"])
async def test_a_stopping_hub_carries_an_edge_relay_and_closes_when_everyone_left(
    kind: str, certs: DeploymentCerts,  # noqa: F811
) -> None:
    server, connect = _hub_and_clients(kind, certs)
    hub = await server.start()
    edge, client = connect(hub, "client-000"), connect(hub, "client-001")
    stopping: asyncio.Task[None] | None = None
    try:
        relay = topic()
        sub = await client.subscribe(relay)
        stopping = asyncio.create_task(hub.stop())  # the root is done
        await wait_until(lambda: hub.hub.draining, what="the hub lingers")
        await edge.publish(relay, b"stop", retain=True)  # the edge relays the root's stop
        assert await take(sub, 1) == [b"stop"]
        assert not stopping.done()  # the client is still subscribed
        await client.close()
        await edge.close()
        await asyncio.wait_for(stopping, 20)  # everyone left: no need to wait out the bound
        assert hub.hub.closed
    finally:
        await client.close()
        await edge.close()
        if stopping is None:
            await hub.stop()
        elif not stopping.done():
            stopping.cancel()


def test_linger_s_is_checked() -> None:
    with pytest.raises(ConfigError, match="linger_s"):
        Hosting.from_params(None, None, None, False, None, linger_s=-1)
    with pytest.raises(ConfigError, match="linger"):
        GrpcHub("127.0.0.1", 0, insecure=True, linger=-1.0)
