"""The HTTPS transport passes the hub transport cases (the transport contract against a real
in-process HttpsHub with mutual TLS, payloads far above aiohttp's 1 MiB body default in several
upload chunks, refused clients without a valid certificate, the sender-identity hook, a federated
job end to end), and its hub enforces max_payload against any HTTP client."""

from __future__ import annotations

import pytest

from foedus.certs import DeploymentCerts
from foedus.testing.transport_contract import topic
from foedus.transport.https import HttpsHub, HttpsTransport
from tests.transport.hub_fixtures import certs, stranger
from tests.transport.hub_transport_cases import HubTransportCases, MiB

__all__ = ["certs", "stranger"]  # fixtures used by name

pytestmark = pytest.mark.integration


class TestHttpsTransport(HubTransportCases):
    transport_class = HttpsTransport
    hub_class = HttpsHub
    endpoint_param = "url"
    refused_sender = r"403.*client-001"


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


async def test_a_client_the_hub_refuses_under_mutual_tls_fails_at_once_saying_why(
    certs: DeploymentCerts, stranger: DeploymentCerts,
) -> None:
    """Under TLS 1.3 the client's handshake completes before the hub checks its certificate,
    and the hub then resets the connection: that reset was retried like a hub not listening
    yet, for the whole connect_timeout (30 s by default), and then reported as "ReadError: "
    with the hub down or TLS refused as the possible causes. A refusal is not retried."""
    import time

    from foedus.core.errors import TransportError
    from foedus.transport.tls import TLSConfig

    async with HttpsHub("127.0.0.1", 0, certs.server_tls(require_client_cert=True)) as hub:
        for tls in (TLSConfig(certs.ca), TLSConfig(certs.ca, *stranger.clients["client-000"])):
            client = HttpsTransport(hub.url, tls=tls, connect_timeout=20)
            began = time.monotonic()
            try:
                with pytest.raises(TransportError, match=r"^cannot reach the HTTPS hub at .*: it "
                                   r"closed the connection after the TLS handshake: it refuses "
                                   r"this client's certificate"):
                    await client.publish(topic(), b"x")
            finally:
                await client.close()
            assert time.monotonic() - began < 3
