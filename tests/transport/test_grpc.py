"""The gRPC transport passes the hub transport cases (the transport contract against a real
in-process GrpcHub with mutual TLS, payloads far above gRPC's 4 MiB message limit, refused
clients without a valid certificate, the sender-identity hook, a federated job end to end)."""

from __future__ import annotations

import asyncio
import time

import pytest

from foedus.certs import DeploymentCerts
from foedus.core.errors import TransportError
from foedus.testing.transport_contract import topic
from foedus.transport.grpc import GrpcHub, GrpcTransport
from foedus.transport.tls import TLSConfig
from tests.transport.hub_fixtures import certs, stranger
from tests.transport.hub_transport_cases import HubTransportCases

__all__ = ["certs", "stranger"]  # fixtures used by name

pytestmark = pytest.mark.integration


class TestGrpcTransport(HubTransportCases):
    # 5 MiB + 3 in payload_sizes is above gRPC's 4 MiB default message limit
    transport_class = GrpcTransport
    hub_class = GrpcHub
    endpoint_param = "address"
    refused_sender = r"PERMISSION_DENIED.*client-001"
    too_large = "max_payload=2097152"


async def test_a_tls_refusal_fails_at_once_saying_why(
    certs: DeploymentCerts, stranger: DeploymentCerts,
) -> None:
    """gRPC treats a failed TLS handshake as transient and retries it: the client waited its
    whole connect_timeout (30 s by default) and then could only guess ("hub down, or TLS
    refused"). Each attempt's error says what happened; a TLS refusal is not retried."""
    async with GrpcHub("127.0.0.1", 0, certs.server_tls(require_client_cert=True)) as hub:
        refused_client = "it refuses this client's certificate"
        cases = [
            ("the hub's certificate is not signed by tls.ca",
             TLSConfig(stranger.ca, *certs.clients["client-000"])),
            (refused_client, TLSConfig(certs.ca)),  # no client certificate
            (refused_client, TLSConfig(certs.ca, *stranger.clients["client-000"])),
        ]
        for why, tls in cases:
            client = GrpcTransport(hub.address, tls=tls, connect_timeout=20)
            began = time.monotonic()
            try:
                with pytest.raises(TransportError, match=rf"^cannot reach the gRPC hub at "
                                                         rf"{hub.address}: .*{why}"):
                    await client.publish(topic(), b"x")
            finally:
                await client.close()
            assert time.monotonic() - began < 5


async def test_a_hub_that_cannot_start_says_why_in_one_line(certs: DeploymentCerts) -> None:
    """grpcio reports both as RuntimeError("Failed to bind to address ...; set GRPC_VERBOSITY
    =debug ..."), which reached the command line as a traceback (exit status 1)."""
    import socket

    from foedus.core.errors import ConfigError

    mismatched = TLSConfig(certs.ca, certs.server_cert, certs.clients["client-000"][1])
    with pytest.raises(ConfigError, match=r"cannot be loaded \(not PEM, or they do not match\)"):
        await GrpcHub("127.0.0.1", 0, mismatched).start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TransportError, match=rf"^gRPC hub cannot listen on 127.0.0.1:{port}"):
            await GrpcHub("127.0.0.1", port, certs.server_tls()).start()


async def test_a_client_certificate_and_key_that_do_not_match_are_refused_at_once(
    certs: DeploymentCerts,
) -> None:
    """grpcio took them, and every connection attempt failed ("Failed to create security
    handshaker") until connect_timeout ran out."""
    from foedus.core.errors import ConfigError
    from tests.conftest import free_port

    mismatched = TLSConfig(certs.ca, certs.clients["client-000"][0],
                           certs.clients["client-001"][1])
    client = GrpcTransport(f"127.0.0.1:{free_port()}", tls=mismatched, connect_timeout=20)
    try:
        with pytest.raises(ConfigError, match=r"cannot be loaded \(not PEM, or they do not "
                                              r"match\)"):
            await asyncio.wait_for(client.publish(topic(), b"x"), 5)
    finally:
        await client.close()
