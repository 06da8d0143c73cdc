"""The gRPC transport passes the transport contract against a real in-process GrpcHub with
mutual TLS, moves payloads far above gRPC's 4 MiB message limit, refuses clients without a valid
certificate, enforces the sender-identity hook, and runs a federated job end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from foedus.certs import DeploymentCerts
from foedus.config.runner import run_job
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, TransportError
from foedus.transport.base import Transport
from foedus.transport.grpc import GrpcHub, GrpcTransport
from foedus.transport.hub import require_sender_identity
from tests.transport.contract import MakeTransport, TransportContract, take, topic
from tests.transport.hub_fixtures import certs, job_dict, stranger, update_from

__all__ = ["certs", "stranger"]  # fixtures used by name

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
async def hub(certs: DeploymentCerts) -> AsyncIterator[GrpcHub]:
    """A gRPC hub on a free loopback port that requires client certificates."""
    server = await GrpcHub("127.0.0.1", 0, certs.server_tls(require_client_cert=True)).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def clients(hub: GrpcHub, certs: DeploymentCerts) -> AsyncIterator[MakeTransport]:
    opened: list[Transport] = []

    async def make(participant: str = "client-000", **kw: object) -> Transport:
        tls = certs.client_tls(participant) if participant else certs.client_tls()
        t = GrpcTransport(hub.address, tls=tls, **kw)  # type: ignore[arg-type]
        opened.append(t)
        return t

    yield make  # type: ignore[misc]
    for t in opened:
        await t.close()


class TestGrpcTransport(TransportContract):
    payload_sizes = (0, 1, 1000, 3 * MiB, 5 * MiB + 3)  # the last is above gRPC's 4 MiB default

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
    with pytest.raises(TransportError, match="cannot reach the gRPC hub"):
        await anonymous.publish(topic(), b"x")


async def test_client_with_certificate_from_another_ca_is_refused(
    hub: GrpcHub, stranger: DeploymentCerts, certs: DeploymentCerts
) -> None:
    from foedus.transport.tls import TLSConfig

    cert, key = stranger.clients["client-000"]
    forged = GrpcTransport(hub.address, tls=TLSConfig(certs.ca, cert, key), connect_timeout=3.0)
    try:
        with pytest.raises(TransportError):
            await forged.subscribe(topic())
    finally:
        await forged.close()


async def test_plaintext_needs_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="tls"):
        GrpcTransport("127.0.0.1:1")
    with pytest.raises(ConfigError, match="tls"):
        GrpcHub("127.0.0.1", 0)


async def test_sender_must_match_certificate_identity(
    certs: DeploymentCerts, clients: MakeTransport
) -> None:
    async with GrpcHub(
        "127.0.0.1", 0, certs.server_tls(), authorize=require_sender_identity()
    ) as guarded:
        c0 = GrpcTransport(guarded.address, tls=certs.client_tls("client-000"))
        reader = GrpcTransport(guarded.address, tls=certs.client_tls("client-001"))
        try:
            t = topic()
            sub = await reader.subscribe(t)
            own = update_from("client-000")
            await c0.publish(t, own)
            with pytest.raises(TransportError, match=r"PERMISSION_DENIED.*client-001"):
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
    async with GrpcHub("127.0.0.1", 0, certs.server_tls(), max_payload=2 * MiB) as small:
        client = GrpcTransport(small.address, tls=certs.client_tls("client-000"))
        try:
            with pytest.raises(TransportError, match="max_payload=2097152"):
                await client.publish(topic(), bytes(3 * MiB))
        finally:
            await client.close()


async def test_federated_job_runs_over_grpc_with_an_in_process_hub(
    certs: DeploymentCerts,
) -> None:
    from tests.conftest import free_port

    transport = {"type": "grpc", "params": {
        "address": f"127.0.0.1:{free_port()}",
        "tls": {"ca": str(certs.ca), "cert": str(certs.clients["participant"][0]),
                "key": str(certs.clients["participant"][1])},
        "serve": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                  "key": str(certs.server_key), "require_client_cert": True},
    }}
    result = await run_job(JobSpec.from_dict(job_dict(transport)))
    assert len(result.history) == 3
    assert all(r.accepted == 3 for r in result.history)
    assert result.final_metrics["accuracy"] > 0.8
