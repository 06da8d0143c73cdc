"""Fixtures shared by the gRPC and HTTPS hub tests: a deployment's certificates, made per module.

Kept out of ``conftest.py`` because other transports' helpers own that file's neighbourhood;
test modules import these names explicitly.
"""

from __future__ import annotations

import pytest

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.core.message import Kind, Message

PARTICIPANTS = ("client-000", "client-001", "client-002", "participant")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCerts:
    """A CA, a server certificate and one certificate per participant (CN = participant id)."""
    return create_deployment_certs(tmp_path_factory.mktemp("certs"), PARTICIPANTS)


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCerts:
    """Certificates from a *different* CA: the hub must refuse them."""
    return create_deployment_certs(tmp_path_factory.mktemp("stranger"), ("client-000",))


def update_from(sender: str) -> bytes:
    """An encoded update message claiming to come from ``sender``."""
    from foedus.codec import encode

    return encode(Message.create(Kind.UPDATE, job_id="job", round=1, sender=sender))


def job_dict(transport: dict[str, object], *, rounds: int = 3) -> dict[str, object]:
    """A small digits job (3 clients) on the given transport section."""
    return {
        "job_id": "hub-e2e", "seed": 0, "rounds": rounds, "round_timeout": 60,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 3, "epochs": 1},
        "model": "sklearn-sgd", "aggregator": "fedavg", "transport": transport,
    }

