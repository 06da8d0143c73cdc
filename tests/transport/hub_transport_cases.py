"""The tests the gRPC and HTTPS transports share, as a base class their test modules subclass.

A hub transport passes the transport contract against a real in-process hub with mutual TLS,
moves a 100 MiB payload, refuses clients without a valid certificate, enforces the
sender-identity hook and ``max_payload``, and runs a federated job end to end. A subclass names
its hub and transport classes, the parameter naming the hub and the wording of its errors; its
module imports the ``certs`` and ``stranger`` fixtures from :mod:`tests.transport.hub_fixtures`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from foedus.certs import DeploymentCerts
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, TransportError
from foedus.runner import run_job
from foedus.testing.transport_contract import MakeTransport, TransportContract, take, topic
from foedus.transport.base import Transport
from foedus.transport.hub import require_sender_identity
from foedus.transport.tls import TLSConfig
from tests.transport.hub_fixtures import job_dict, update_from

MiB = 1024 * 1024


class HubTransportCases(TransportContract):
    """Behaviour every hub transport shares; subclasses set the class attributes below."""

    pytestmark = pytest.mark.integration

    payload_sizes = (0, 1, 1000, 3 * MiB, 5 * MiB + 3)
    #: the transport's class (its name and label word its job files and errors) and its hub's
    transport_class: ClassVar[Any]  # a HubClient subclass
    hub_class: ClassVar[Any]
    #: the transport parameter naming the hub ("address" or "url") and the hub's attribute for it
    endpoint_param: ClassVar[str]
    #: what a publish refused by the sender-identity hook says
    refused_sender: ClassVar[str]
    #: what a publish over the hub's max_payload of 2 MiB says
    too_large: ClassVar[str] = "max_payload"

    @property
    def kind(self) -> str:
        return str(self.transport_class.name)

    @property
    def label(self) -> str:
        return str(self.transport_class.label)

    @classmethod
    def endpoint(cls, hub: Any) -> str:
        return str(getattr(hub, cls.endpoint_param))

    def endpoint_for_port(self, port: int) -> str:
        return f"{'127.0.0.1' if self.kind == 'grpc' else 'https://127.0.0.1'}:{port}"

    def connect(self, hub: Any, tls: TLSConfig | None, **kw: Any) -> Transport:
        transport: Transport = self.transport_class(self.endpoint(hub), tls=tls, **kw)
        return transport

    @pytest.fixture
    async def hub(self, certs: DeploymentCerts) -> AsyncIterator[Any]:
        """A hub on a free loopback port that requires client certificates."""
        server = await self.hub_class(
            "127.0.0.1", 0, certs.server_tls(require_client_cert=True)
        ).start()
        try:
            yield server
        finally:
            await server.stop()

    @pytest.fixture
    async def clients(self, hub: Any, certs: DeploymentCerts) -> AsyncIterator[MakeTransport]:
        opened: list[Transport] = []

        async def make(participant: str = "client-000", **kw: object) -> Transport:
            tls = certs.client_tls(participant) if participant else certs.client_tls()
            t = self.connect(hub, tls, **kw)
            opened.append(t)
            return t

        yield make  # type: ignore[misc]
        for t in opened:
            await t.close()

    @pytest.fixture
    def make_transport(self, clients: MakeTransport) -> MakeTransport:
        return clients

    async def test_payload_of_100_mib_round_trips(self, clients: MakeTransport) -> None:
        pub, sub_t = await clients(), await clients()
        t = topic()
        sub = await sub_t.subscribe(t)
        payload = bytes(range(256)) * (100 * MiB // 256) + b"tail"
        await pub.publish(t, payload)
        assert await take(sub, 1, timeout=120) == [payload]

    async def test_client_without_certificate_is_refused(self, clients: Any) -> None:
        anonymous = await clients("", connect_timeout=3.0)
        with pytest.raises(TransportError, match=f"cannot reach the {self.label} hub"):
            await anonymous.publish(topic(), b"x")

    async def test_client_with_certificate_from_another_ca_is_refused(
        self, hub: Any, stranger: DeploymentCerts, certs: DeploymentCerts
    ) -> None:
        cert, key = stranger.clients["client-000"]
        forged = self.connect(hub, TLSConfig(certs.ca, cert, key), connect_timeout=3.0)
        try:
            with pytest.raises(TransportError):
                await forged.subscribe(topic())
        finally:
            await forged.close()

    async def test_plaintext_needs_explicit_opt_in(self) -> None:
        with pytest.raises(ConfigError, match="tls"):
            self.transport_class(self.endpoint_for_port(1))
        with pytest.raises(ConfigError, match="tls"):
            self.hub_class("127.0.0.1", 0)

    async def test_sender_must_match_certificate_identity(
        self, certs: DeploymentCerts, clients: MakeTransport
    ) -> None:
        async with self.hub_class(
            "127.0.0.1", 0, certs.server_tls(), authorize=require_sender_identity()
        ) as guarded:
            c0 = self.connect(guarded, certs.client_tls("client-000"))
            reader = self.connect(guarded, certs.client_tls("client-001"))
            try:
                t = topic()
                sub = await reader.subscribe(t)
                own = update_from("client-000")
                await c0.publish(t, own)
                with pytest.raises(TransportError, match=self.refused_sender):
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

    async def test_oversized_payload_is_refused_with_a_clear_error(
        self, certs: DeploymentCerts
    ) -> None:
        async with self.hub_class("127.0.0.1", 0, certs.server_tls(), max_payload=2 * MiB) as small:
            client = self.connect(small, certs.client_tls("client-000"))
            try:
                with pytest.raises(TransportError, match=self.too_large):
                    await client.publish(topic(), bytes(3 * MiB))
            finally:
                await client.close()

    async def test_federated_job_runs_with_an_in_process_hub(self, certs: DeploymentCerts) -> None:
        from tests.conftest import free_port

        transport: dict[str, object] = {"type": self.kind, "params": {
            self.endpoint_param: self.endpoint_for_port(free_port()),
            "tls": {"ca": str(certs.ca), "cert": str(certs.clients["participant"][0]),
                    "key": str(certs.clients["participant"][1])},
            "serve": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                      "key": str(certs.server_key), "require_client_cert": True},
        }}
        result = await run_job(JobSpec.from_dict(job_dict(transport)))
        assert len(result.history) == 3
        assert all(r.accepted == 3 for r in result.history)
        assert result.final_metrics["accuracy"] > 0.8
