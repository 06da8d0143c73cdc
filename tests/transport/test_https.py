"""The HTTPS transport passes the transport contract against a real in-process HttpsHub with
mutual TLS, streams payloads far above aiohttp's 1 MiB body default, refuses clients without a
valid certificate, enforces the sender-identity hook, and runs a federated job end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from foedus.certs import DeploymentCerts
from foedus.config.runner import run_job
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, TransportError
from foedus.transport.base import Transport
from foedus.transport.https import HttpsHub, HttpsTransport
from foedus.transport.hub import require_sender_identity
from tests.transport.contract import MakeTransport, TransportContract, take, topic
from tests.transport.hub_fixtures import certs, job_dict, stranger, update_from

__all__ = ["certs", "stranger"]  # fixtures used by name

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
async def hub(certs: DeploymentCerts) -> AsyncIterator[HttpsHub]:
    """An HTTPS hub on a free loopback port that requires client certificates."""
    server = await HttpsHub("127.0.0.1", 0, certs.server_tls(require_client_cert=True)).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def clients(hub: HttpsHub, certs: DeploymentCerts) -> AsyncIterator[MakeTransport]:
    opened: list[Transport] = []

    async def make(participant: str = "client-000", **kw: object) -> Transport:
        tls = certs.client_tls(participant) if participant else certs.client_tls()
        t = HttpsTransport(hub.url, tls=tls, **kw)  # type: ignore[arg-type]
        opened.append(t)
        return t

    yield make  # type: ignore[misc]
    for t in opened:
        await t.close()


class TestHttpsTransport(TransportContract):
    payload_sizes = (0, 1, 1000, 3 * MiB, 5 * MiB + 3)  # several 1 MiB upload chunks

    @pytest.fixture
    def make_transport(self, clients: MakeTransport) -> MakeTransport:
        return clients


async def test_payload_of_100_mib_round_trips(clients: MakeTransport) -> None:
    pub, sub_t = await clients(), await clients()
    t = topic()
    sub = await sub_t.subscribe(t)
    payload = bytes(range(256)) * (100 * MiB // 256) + b"tail"
    await pub.publish(t, payload)
    assert await take(sub, 1, timeout=120) == [payload]


async def test_client_without_certificate_is_refused(clients: MakeTransport) -> None:
    anonymous = await clients("", connect_timeout=3.0)
    with pytest.raises(TransportError, match="cannot reach the HTTPS hub"):
        await anonymous.publish(topic(), b"x")


async def test_client_with_certificate_from_another_ca_is_refused(
    hub: HttpsHub, stranger: DeploymentCerts, certs: DeploymentCerts
) -> None:
    from foedus.transport.tls import TLSConfig

    cert, key = stranger.clients["client-000"]
    forged = HttpsTransport(hub.url, tls=TLSConfig(certs.ca, cert, key), connect_timeout=3.0)
    try:
        with pytest.raises(TransportError):
            await forged.subscribe(topic())
    finally:
        await forged.close()


async def test_plaintext_needs_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="tls"):
        HttpsTransport("https://127.0.0.1:1")
    with pytest.raises(ConfigError, match="tls"):
        HttpsHub("127.0.0.1", 0)


async def test_sender_must_match_certificate_identity(
    certs: DeploymentCerts, clients: MakeTransport
) -> None:
    async with HttpsHub(
        "127.0.0.1", 0, certs.server_tls(), authorize=require_sender_identity()
    ) as guarded:
        c0 = HttpsTransport(guarded.url, tls=certs.client_tls("client-000"))
        reader = HttpsTransport(guarded.url, tls=certs.client_tls("client-001"))
        try:
            t = topic()
            sub = await reader.subscribe(t)
            own = update_from("client-000")
            await c0.publish(t, own)
            with pytest.raises(TransportError, match=r"403.*client-001"):
                await c0.publish(t, update_from("client-001"))
            with pytest.raises(TransportError, match="not a foedus message"):
                await c0.publish(t, b"garbage")
            later = update_from("client-000")
            await c0.publish(t, later)
            assert await take(sub, 2) == [own, later]  # the refused ones never reached anyone
            assert guarded.hub.stats["refused_unauthorized"] == 2
        finally:
            await c0.close()
            await reader.close()


async def test_oversized_payload_is_refused_with_a_clear_error(certs: DeploymentCerts) -> None:
    async with HttpsHub("127.0.0.1", 0, certs.server_tls(), max_payload=2 * MiB) as small:
        client = HttpsTransport(small.url, tls=certs.client_tls("client-000"))
        try:
            with pytest.raises(TransportError, match="max_payload"):
                await client.publish(topic(), bytes(3 * MiB))
        finally:
            await client.close()


async def test_federated_job_runs_over_https_with_an_in_process_hub(
    certs: DeploymentCerts,
) -> None:
    from tests.conftest import free_port

    transport = {"type": "https", "params": {
        "url": f"https://127.0.0.1:{free_port()}",
        "tls": {"ca": str(certs.ca), "cert": str(certs.clients["participant"][0]),
                "key": str(certs.clients["participant"][1])},
        "serve": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                  "key": str(certs.server_key), "require_client_cert": True},
    }}
    result = await run_job(JobSpec.from_dict(job_dict(transport)))
    assert len(result.history) == 3
    assert all(r.accepted == 3 for r in result.history)
    assert result.final_metrics["accuracy"] > 0.8


async def test_hub_refuses_an_oversized_upload_from_any_http_client(
    certs: DeploymentCerts,
) -> None:
    """The client-side check is a courtesy; the hub enforces max_payload on the stream itself."""
    import httpx

    async with HttpsHub("127.0.0.1", 0, certs.server_tls(), max_payload=2 * MiB) as small:
        tls = certs.client_tls("client-000").client_context()
        async with httpx.AsyncClient(base_url=small.url, verify=tls) as raw:
            r = await raw.put("/v1/publish", params={"topic": topic()}, content=bytes(3 * MiB))
        assert r.status_code == 413
        assert "max_payload" in r.json()["error"]
        assert small.hub.stats["refused_too_large"] == 1
