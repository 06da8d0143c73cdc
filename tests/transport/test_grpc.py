"""The gRPC transport passes the hub transport cases (the transport contract against a real
in-process GrpcHub with mutual TLS, payloads far above gRPC's 4 MiB message limit, refused
clients without a valid certificate, the sender-identity hook, a federated job end to end)."""

from __future__ import annotations

from foedus.transport.grpc import GrpcHub, GrpcTransport
from tests.transport.hub_fixtures import certs, stranger
from tests.transport.hub_transport_cases import HubTransportCases

__all__ = ["certs", "stranger"]  # fixtures used by name


class TestGrpcTransport(HubTransportCases):
    # 5 MiB + 3 in payload_sizes is above gRPC's 4 MiB default message limit
    transport_class = GrpcTransport
    hub_class = GrpcHub
    endpoint_param = "address"
    refused_sender = r"PERMISSION_DENIED.*client-001"
    too_large = "max_payload=2097152"
