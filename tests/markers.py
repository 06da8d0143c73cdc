"""Which tests must carry ``@pytest.mark.integration``: those that start a real component.

``pytest -m "not integration"`` is the fast, hermetic run; it is only honest if every test that
starts a broker, a server process, MLflow, S3, Prometheus or an actor process says so. The
fixtures below are the ones that start such components; ``tests/conftest.py`` fails, at setup,
any test that uses one of them (directly or through another fixture) without the marker, so the
marker cannot silently go missing when a test is added or moved.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

#: fixtures that start a real external component, by the module defining them
STARTERS: frozenset[str] = frozenset({
    # tests/transport/mqtt_fixtures.py: Mosquitto brokers
    "mosquitto", "own_mosquitto",
    # tests/transport/kafka_fixtures.py and tests/privacy/conftest.py: Tansu (Kafka) brokers
    "tansu", "tansu_tls", "tansu_mtls", "tansu_s3",
    # tests/mlops/conftest.py: an MLflow tracking server, an S3 server, Prometheus
    "mlflow_server", "s3_endpoint", "prometheus",
    # tests/reliability/conftest.py: actors as OS processes
    "actors",
    # tests/transport/hub_transport_cases.py: a gRPC or HTTPS hub listening on loopback
    "hub",
    # tests/federation/postgres_fixtures.py: a PostgreSQL server
    "postgres",
    # tests/federation/test_console.py: a headless Chromium
    "browser",
})


def missing_marker(fixturenames: Iterable[str], marked: bool) -> str | None:
    """Why a test with these fixtures (its whole closure) and marker state is mis-marked, or
    None when it is fine."""
    if marked:
        return None
    starters = sorted(STARTERS.intersection(fixturenames))
    if not starters:
        return None
    return (f"uses {', '.join(starters)}, which start(s) a real component, but is not marked "
            "@pytest.mark.integration (add it, or a module-level pytestmark)")


def check(item: pytest.Item) -> None:
    """Fail ``item`` when it starts a real component without the integration marker."""
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:  # a parametrize argument that happens to share a starter's name
        names -= set(callspec.params)
    reason = missing_marker(names, item.get_closest_marker("integration") is not None)
    if reason is not None:
        pytest.fail(f"{item.nodeid} {reason}", pytrace=False)
