"""An in-process coordinator with its console, served by aiohttp's test server on loopback
(plain HTTP: the console's cookie handling is the same; TLS is the real-browser test's job)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from foedus.federation.coordinator import Coordinator, CoordinatorConfig
from foedus.federation.policy import CatalogEntry, Policy
from foedus.transport.tls import TLSConfig

ADMIN = "admin-token-of-the-console-tests"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    config = CoordinatorConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                               tls=TLSConfig(ca=tmp_path / "unused-ca.pem"),
                               admin_token_file=tmp_path / "admin.token", heartbeat_timeout=10,
                               catalog={"digits": CatalogEntry("digits")})
    made = Coordinator(config)
    # two sites as their heartbeats report them: site-b allows at most 60 rounds
    made.store.heartbeat("site-a", "0.1.0", {"catalog": ["digits"],
                                             "policy": Policy().as_dict()})
    made.store.heartbeat("site-b", "0.1.0", {"catalog": ["digits"],
                                             "policy": Policy(max_rounds=60).as_dict()})
    yield made
    # a submitted job's server process starts at once, gated until its sites accept (which
    # never happens here): stopped with the test, not left to give up minutes later
    for proc in made.servers.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    made.stop_all()


@pytest.fixture
async def client(coordinator: Coordinator) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(coordinator.app())) as made:
        yield made
