"""TLSConfig builds working client/server contexts, and the peer identity is the certificate CN."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.core.errors import ConfigError
from foedus.transport.tls import TLSConfig, identity_from_cert, peer_identity


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCerts:
    return create_deployment_certs(tmp_path_factory.mktemp("tls"), ["alice", "bob"])


class Server:
    """A loopback TLS echo server that records the identity of each client it accepted."""

    def __init__(self) -> None:
        self.identities: list[str | None] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.identities.append(peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()


@pytest.fixture
async def serve(certs: DeploymentCerts) -> AsyncIterator[Server]:
    recorder = Server()
    server = await asyncio.start_server(
        recorder.handle, "127.0.0.1", 0, ssl=certs.server_tls(require_client_cert=True)
        .server_context(),
    )
    recorder.port = server.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()


async def _echo(port: int, tls: TLSConfig, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls.client_context())
    try:
        writer.write(b"ping\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_mutual_tls_handshake_yields_the_client_certificate_cn(
    serve: Server, certs: DeploymentCerts
) -> None:
    assert await _echo(serve.port, certs.client_tls("alice")) == b"ping\n"
    assert await _echo(serve.port, certs.client_tls("bob"), host="localhost") == b"ping\n"
    assert serve.identities == ["alice", "bob"]


async def test_server_requiring_client_certs_refuses_a_client_without_one(
    serve: Server, certs: DeploymentCerts
) -> None:
    try:
        answer: bytes | None = await _echo(serve.port, certs.client_tls())
    except (ssl.SSLError, ConnectionError):
        answer = None
    # TLS 1.3 reports the refusal after the client's handshake: an error or a closed stream
    assert answer in (None, b"")
    assert serve.identities == []


async def test_client_refuses_a_server_from_another_ca(
    serve: Server, tmp_path: Path
) -> None:
    other = create_deployment_certs(tmp_path, ["alice"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _echo(serve.port, other.client_tls("alice"))


async def test_optional_client_certs_give_no_identity_to_anonymous_clients(
    certs: DeploymentCerts,
) -> None:
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    ctx = certs.server_tls(require_client_cert=False).server_context()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        await _echo(port, certs.client_tls())
        await _echo(port, certs.client_tls("bob"))
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [None, "bob"]


def test_peer_identity_without_tls_or_certificate_is_none() -> None:
    assert peer_identity(None) is None
    assert identity_from_cert({}) is None
    assert identity_from_cert({"subject": ((("organizationName", "x"),),)}) is None


def test_missing_files_are_named_in_the_error(tmp_path: Path, certs: DeploymentCerts) -> None:
    with pytest.raises(ConfigError, match=r"CA file .*nope\.pem.* does not exist"):
        TLSConfig(tmp_path / "nope.pem").client_context()
    with pytest.raises(ConfigError, match=r"private key file .*gone\.key"):
        TLSConfig(certs.ca, certs.server_cert, tmp_path / "gone.key").server_context()


def test_cert_without_key_is_refused(certs: DeploymentCerts) -> None:
    with pytest.raises(ConfigError, match="cert and key go together"):
        TLSConfig(certs.ca, cert=certs.server_cert)


def test_server_context_needs_its_own_certificate(certs: DeploymentCerts) -> None:
    with pytest.raises(ConfigError, match="needs a TLS certificate"):
        TLSConfig(certs.ca).server_context()


def test_mismatched_key_and_garbage_ca_are_config_errors(
    certs: DeploymentCerts, tmp_path: Path
) -> None:
    alice_key = certs.clients["alice"][1]
    with pytest.raises(ConfigError, match="cannot be loaded"):
        TLSConfig(certs.ca, certs.server_cert, alice_key).client_context()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        TLSConfig(junk).client_context()


def test_unreadable_file_is_reported(tmp_path: Path, certs: DeploymentCerts) -> None:
    assert TLSConfig(tmp_path).ca == tmp_path
    with pytest.raises(ConfigError, match="is not a file"):
        TLSConfig(tmp_path).check_files()


def test_from_mapping_reads_a_job_file_section(certs: DeploymentCerts) -> None:
    tls = TLSConfig.from_mapping({"ca": str(certs.ca), "cert": str(certs.server_cert),
                                  "key": str(certs.server_key), "require_client_cert": True})
    assert tls == certs.server_tls(require_client_cert=True)
    assert TLSConfig.from_mapping(None) is None
    assert TLSConfig.from_mapping(tls) is tls
    with pytest.raises(ConfigError, match="unknown tls option"):
        TLSConfig.from_mapping({"ca": "x", "verify": False})
    with pytest.raises(ConfigError, match="needs 'ca'"):
        TLSConfig.from_mapping({"cert": "x", "key": "y"})


def test_config_is_frozen(certs: DeploymentCerts) -> None:
    tls = certs.client_tls("alice")
    with pytest.raises(AttributeError):
        tls.ca = Path("/elsewhere")  # type: ignore[misc]
