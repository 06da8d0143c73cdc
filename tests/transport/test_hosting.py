"""Which process hosts the gRPC/HTTPS hub (``serve``, ``serve_as``, ``actor``), and what a client
does when the hub goes away and comes back (re-subscribe, retry publishes)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from foedus.certs import DeploymentCerts
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, TransportError
from foedus.runner import run_job
from foedus.testing import wait_until
from foedus.testing.transport_contract import take, topic
from foedus.transport.base import Transport
from foedus.transport.grpc import GrpcHub, GrpcTransport
from foedus.transport.https import HttpsHub, HttpsTransport
from foedus.transport.tls import TLSConfig
from tests.conftest import free_port
from tests.transport.hub_fixtures import certs, job_dict

__all__ = ["certs"]  # fixtures used by name

pytestmark = pytest.mark.integration

KINDS = ["grpc", "https"]


def endpoint(kind: str, port: int) -> dict[str, str]:
    return ({"address": f"127.0.0.1:{port}"} if kind == "grpc"
            else {"url": f"https://127.0.0.1:{port}"})


def transport(kind: str, port: int, **params: Any) -> Transport:
    cls: Any = GrpcTransport if kind == "grpc" else HttpsTransport
    return cls(**endpoint(kind, port), **params)  # type: ignore[no-any-return]


def hub_starter(kind: str, port: int, tls: TLSConfig) -> Callable[[], Awaitable[Any]]:
    async def start() -> Any:
        hub_cls: Any = GrpcHub if kind == "grpc" else HttpsHub
        return await hub_cls("127.0.0.1", port, tls).start()

    return start


def logged(caplog: pytest.LogCaptureFixture, words: str) -> bool:
    """Whether a warning containing ``words`` was logged (the transports say when they retry)."""
    return any(words in record.getMessage() for record in caplog.records)


def reached_no_hub(transport: Transport, caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the client has tried to reach a hub that is down, and failed: HTTPS logs each
    retry of a publish; gRPC waits for its channel, whose state says a connection failed."""
    if logged(caplog, "retrying"):
        return True
    channel = getattr(transport, "_channel", None)
    return channel is not None and channel.get_state().name == "TRANSIENT_FAILURE"


def serve_params(certs: DeploymentCerts) -> dict[str, Any]:
    return {"ca": str(certs.ca), "cert": str(certs.server_cert), "key": str(certs.server_key),
            "require_client_cert": True}


# ---- serve_as: only the named actor hosts -------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_serve_as_needs_the_actor_filled_in(kind: str, certs: DeploymentCerts) -> None:
    with pytest.raises(ConfigError, match="serve_as needs actor"):
        transport(kind, 1, tls=certs.client_tls("client-000"), serve=serve_params(certs),
                  serve_as="server")
    with pytest.raises(ConfigError, match="serve_as needs actor"):  # placeholder left unfilled
        transport(kind, 1, tls=certs.client_tls("client-000"), serve=serve_params(certs),
                  serve_as="server", actor="{actor}")
    with pytest.raises(ConfigError, match="need"):
        transport(kind, 1, tls=certs.client_tls("client-000"), serve_as="server", actor="x")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("params", "message"), [
    ({"insecure": "false"}, r"^insecure must be true or false, got 'false'$"),
    ({"verify_sender": "no"}, r"^verify_sender must be true or false, got 'no'$"),
    ({"connect_timeout": "30"}, r"^connect_timeout must be a positive number, got '30'$"),
])
def test_mistyped_options_are_refused_naming_them(
        kind: str, params: dict[str, Any], message: str, certs: DeploymentCerts) -> None:
    """The transports took bool(value): insecure: "false" meant plaintext allowed. A string
    timeout failed with "'>' not supported between instances of 'str' and 'int'"."""
    with pytest.raises(ConfigError, match=message):
        transport(kind, 1, tls=certs.client_tls("client-000"), **params)


def test_a_mistyped_require_client_cert_is_refused(certs: DeploymentCerts) -> None:
    with pytest.raises(ConfigError, match=r"^tls require_client_cert must be true or false, "
                                          r"got 'false'$"):
        TLSConfig.from_mapping({**serve_params(certs), "require_client_cert": "false"})


@pytest.mark.parametrize("kind", KINDS)
async def test_only_the_serve_as_actor_hosts_and_the_others_connect(
    kind: str, certs: DeploymentCerts,
) -> None:
    port = free_port()
    common = {"serve": serve_params(certs), "serve_as": "server", "verify_sender": True}
    client = transport(kind, port, tls=certs.client_tls("client-000"), actor="client-000",
                       connect_timeout=0.5, **common)
    try:  # no server actor in this process yet: the client finds no hub
        with pytest.raises(TransportError, match="cannot reach"):
            await client.subscribe(topic())
    finally:
        await client.close()
    # the hosting actor needs no client certificate: it uses its hub without a connection
    server = transport(kind, port, actor="server", **common)
    client = transport(kind, port, tls=certs.client_tls("client-000"), actor="client-000",
                       **common)
    try:
        t = topic()
        updates = await server.subscribe(t, group="server")
        models = await client.subscribe(t + "-model")
        from tests.transport.hub_fixtures import update_from

        mine = update_from("client-000")
        await client.publish(t, mine)
        with pytest.raises(TransportError, match="does not match"):  # verify_sender is on
            await client.publish(t, update_from("client-001"))
        assert await take(updates, 1) == [mine]
        model = update_from("server")  # the hosting actor's identity is its actor name
        await server.publish(t + "-model", model, retain=True)
        assert await take(models, 1) == [model]
    finally:
        await client.close()
        await server.close()


# ---- port 0: "any free port" is for the hub that binds -------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_a_client_refuses_port_0_at_once(kind: str, certs: DeploymentCerts) -> None:
    """Nothing listens on port 0: a client dialing it waited its whole connect_timeout (30 s by
    default) and then blamed the hub or TLS. A transport that cannot host is refused when it
    is made; an actor that may not host (``serve_as`` another) when it is first used in a
    process that hosts no hub there (in one process, the server's transport may come later)."""
    with pytest.raises(ConfigError, match=r"port 0 .*only the process that hosts the hub"):
        transport(kind, 0, tls=certs.client_tls("client-000"), connect_timeout=3)
    client = transport(kind, 0, tls=certs.client_tls("client-000"), serve=serve_params(certs),
                       serve_as="server", actor="client-000", connect_timeout=3)
    try:
        with pytest.raises(ConfigError, match=r"port 0 .*this process hosts no hub"):
            await client.subscribe(topic())
    finally:
        await client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_port_above_65535_is_refused_naming_the_address(
        kind: str, certs: DeploymentCerts) -> None:
    """gRPC took it (and dialed nothing for connect_timeout); HTTPS raised urllib's
    ValueError ("Port out of range"), a traceback."""
    with pytest.raises(ConfigError, match=r"HOST:PORT \(port 0-65535\), got .*:70000"):
        transport(kind, 70000, tls=certs.client_tls("client-000"))


@pytest.mark.parametrize("kind", KINDS)
async def test_transports_of_a_process_hosting_on_port_0_dial_the_port_its_hub_bound(
    kind: str, certs: DeploymentCerts,
) -> None:
    """``serve`` with port 0: the hub binds a free port, and the transports of its process
    that connect over the network (every one without ``serve_as``; the non-hosting actors
    with it) use that port, instead of dialing port 0 until connect_timeout."""
    hosting = transport(kind, 0, tls=certs.client_tls("client-000"), serve=serve_params(certs),
                        connect_timeout=3)
    other = transport(kind, 0, tls=certs.client_tls("client-001"), serve=serve_params(certs),
                      connect_timeout=3)
    try:
        t = topic()
        sub = await other.subscribe(t)
        await hosting.publish(t, b"through the bound port")
        assert await take(sub, 1) == [b"through the bound port"]
    finally:
        await other.close()
        await hosting.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_one_process_job_with_a_certificate_per_participant(
    kind: str, certs: DeploymentCerts,
) -> None:
    """run_job opens the clients' transports before the server's; they still find its hub."""
    out = certs.out
    params = {
        **endpoint(kind, free_port()), "actor": "{actor}", "serve_as": "server",
        "serve": serve_params(certs), "verify_sender": True,
        "tls": {"ca": str(certs.ca), "cert": f"{out}/clients/{{actor}}.pem",
                "key": f"{out}/clients/{{actor}}.key"},
    }
    result = await run_job(JobSpec.from_dict(job_dict({"type": kind, "params": params})))
    assert len(result.history) == 3
    assert all(r.accepted == 3 and not r.rejected for r in result.history)
    assert result.final_metrics["accuracy"] > 0.8


# ---- the hub restarts -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_subscription_reconnects_after_the_hub_restarts(
    kind: str, certs: DeploymentCerts, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    start = hub_starter(kind, port, certs.server_tls(require_client_cert=True))
    hub = await start()
    pub = transport(kind, port, tls=certs.client_tls("client-000"), reconnect_timeout=20)
    sub_t = transport(kind, port, tls=certs.client_tls("client-001"), reconnect_timeout=20)
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        await pub.publish(t, b"before", retain=True)
        assert await take(sub, 1) == [b"before"]
        reading = asyncio.create_task(take(sub, 1, timeout=30))
        await wait_until(lambda: hub.hub.waiting(t) > 0,  # its stream / long poll is parked
                         what="the subscriber waits on the hub")
        await hub.stop()  # the hub's state (logs, retained values) is gone
        await wait_until(lambda: logged(caplog, "broke"), what="the subscriber saw the hub go")
        hub = await start()
        # retained: whenever the subscriber re-subscribes, it gets the current value first
        await pub.publish(t, b"after restart", retain=True)
        assert await reading in ([b"after restart"],)
        assert sub.reconnects >= 1  # type: ignore[attr-defined]
    finally:
        await pub.close()
        await sub_t.close()
        await hub.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_publish_waits_for_a_hub_that_is_restarting(
    kind: str, certs: DeploymentCerts, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    start = hub_starter(kind, port, certs.server_tls(require_client_cert=True))
    hub = await start()
    pub = transport(kind, port, tls=certs.client_tls("client-000"), reconnect_timeout=20)
    try:
        t = topic()
        await pub.publish(t, b"first")
        await hub.stop()
        publishing = asyncio.create_task(pub.publish(t, b"second", retain=True))
        await wait_until(lambda: reached_no_hub(pub, caplog) or publishing.done(),
                         what="the publisher finds no hub")
        assert not publishing.done()  # retrying, not failed
        hub = await start()
        await asyncio.wait_for(publishing, 20)
        late = transport(kind, port, tls=certs.client_tls("client-001"))
        try:
            assert await take(await late.subscribe(t), 1) == [b"second"]
        finally:
            await late.close()
    finally:
        await pub.close()
        await hub.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_subscription_whose_hub_stays_gone_gives_up_after_reconnect_timeout(
    kind: str, certs: DeploymentCerts,
) -> None:
    """Each re-subscribe attempt waited up to connect_timeout (30 s) for the hub, so a gRPC
    subscription told to give up after reconnect_timeout=2 gave up after 30 s and more."""
    port = free_port()
    hub = await hub_starter(kind, port, certs.server_tls(require_client_cert=True))()
    sub_t = transport(kind, port, tls=certs.client_tls("client-001"), reconnect_timeout=2,
                      connect_timeout=30)
    try:
        sub = await sub_t.subscribe(topic())
        await hub.stop()
        began = asyncio.get_running_loop().time()
        with pytest.raises(TransportError, match="could not be re-established within 2"):
            await asyncio.wait_for(anext(sub), 20)
        assert asyncio.get_running_loop().time() - began < 6
    finally:
        await sub_t.close()
        await hub.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_last_message_reaches_subscribers_when_the_hub_stops_right_after(
    kind: str, certs: DeploymentCerts,
) -> None:
    """A server publishes "stop" and exits at once: its hub drains before it closes."""
    port = free_port()
    hub = await hub_starter(kind, port, certs.server_tls(require_client_cert=True))()
    pub = transport(kind, port, tls=certs.client_tls("client-000"))
    sub_t = transport(kind, port, tls=certs.client_tls("client-001"))
    try:
        t = f"drain-{uuid.uuid4().hex[:6]}"
        sub = await sub_t.subscribe(t)
        for p in (b"a", b"b", b"stop"):
            await pub.publish(t, p)
        stopping = asyncio.create_task(hub.stop())
        # the hub is stopping before the subscriber has asked for anything
        await wait_until(lambda: hub.hub.draining or hub.hub.closed, what="the hub stops")
        assert await take(sub, 3) == [b"a", b"b", b"stop"]
        await stopping
    finally:
        await pub.close()
        await sub_t.close()
