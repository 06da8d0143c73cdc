"""The federation of the real-process tests: a coordinator (`foedus coordinator`) keeping its
state in a real PostgreSQL server, two site agents (`foedus site`) with certificates made here
by `foedus.certs`, and the helpers that submit jobs to it and wait on it. Shared by
``test_federation`` and ``test_console`` (the web console driven in a browser); each module
that uses the ``federation`` fixture gets its own (module scope).

Every wait polls the coordinator's API with a deadline; every process started here is stopped
by its pid at the end.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from foedus.certs import DeploymentCerts, create_deployment_certs
from tests.conftest import free_port
from tests.federation.postgres_fixtures import Postgres
from tests.transport.mqtt_fixtures import Mosquitto

FOEDUS = [sys.executable, "-m", "foedus.cli"]
SITES = ("site-a", "site-b")
#: the lifetime budget of the sites' catalog entry digits-dp: one 4-round job of DP_STAGE
#: spends 1.69, a second would bring it to 2.48
BUDGET = {"epsilon": 2.0, "delta": 1e-5}
DP_STAGE = {"type": "central-dp", "params": {"clients_per_round": 2, "clip_norm": 5.0,
                                             "noise_multiplier": 5.0}}


@dataclass
class Federation:
    root: Path
    certs: DeploymentCerts
    url: str
    admin_token: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def api(self, token: str | None = None) -> httpx.Client:
        """A client of the coordinator's API that waits as long as the CLI does (60 s): on a
        loaded machine a TLS handshake can take longer than httpx's default 5 s."""
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(
            cafile=str(self.certs.ca)), headers={"Authorization": f"Bearer "
                                                 f"{token or self.admin_token}"},
                            timeout=60)

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FOEDUS_COORDINATOR": self.url, "FOEDUS_CA": str(self.certs.ca),
               "FOEDUS_TOKEN": token or self.admin_token}
        return subprocess.run([*FOEDUS, *args], env=env, capture_output=True, text=True,
                              timeout=60)

    def job(self, job_id: str) -> dict[str, Any]:
        with self.api() as api:
            found: dict[str, Any] = api.get(f"/v1/jobs/{job_id}").json()
        return found

    def start_coordinator(self) -> None:
        log = (self.root / "coordinator.log").open("ab")
        self.procs["coordinator"] = subprocess.Popen(
            [*FOEDUS, "coordinator", "--config", str(self.root / "coordinator.yaml")],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _healthy(self), 60, "the coordinator to listen",
                 self.root / "coordinator.log")

    def start_site(self, name: str) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [*FOEDUS, "site", "--config", str(self.root / f"{name}.yaml")],
            stdout=log, stderr=subprocess.STDOUT)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _healthy(fed: Federation) -> bool:
    try:
        with fed.api() as api:
            return api.get("/v1/health").status_code == 200
    except httpx.TransportError:
        return False


def wait_for(check: Callable[[], Any], seconds: float, what: str, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy, or fail naming what never happened."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)  # between polls of a condition, bounded by the deadline
    detail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {seconds}s waiting for {what}\n{detail}")


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres
               ) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    certs = create_deployment_certs(root / "certs", SITES)
    port = free_port()
    _write(root / "coordinator.yaml", {
        "listen": {"host": "127.0.0.1", "port": port}, "state_dir": "state",
        "tls": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                "key": str(certs.server_key)},
        "admin_token_file": "admin.token", "heartbeat_timeout": 10,
        "database": postgres.new_database(),
        "catalog": {"digits": {"dataset": "digits"}, "digits-dp": {"dataset": "digits"}}})
    (root / "admin.token").write_text("the-admin-token-of-this-test\n")
    fed = Federation(root, certs, f"https://127.0.0.1:{port}", "the-admin-token-of-this-test")
    policies: dict[str, dict[str, Any]] = {
        "site-a": {"models": ["sklearn-sgd"], "max_jobs": 3},
        "site-b": {"models": ["sklearn-sgd"], "max_rounds": 60, "transports": ["mqtt"]},
    }
    try:
        fed.start_coordinator()
        for name in SITES:
            cert, key = certs.clients[name]
            _write(root / f"{name}.yaml", {
                "coordinator": fed.url, "state_dir": f"{name}-state", "heartbeat_s": 0.5,
                "tls": {"ca": str(certs.ca), "cert": str(cert), "key": str(key)},
                "catalog": {"digits": {"dataset": "digits"},
                            "digits-dp": {"dataset": "digits", "budget": BUDGET}},
                "policy": policies[name]})
            fed.start_site(name)

        def online() -> bool:
            with fed.api() as api:
                sites = api.get("/v1/sites").json()["sites"]
            return sorted(s["name"] for s in sites if s["online"]) == list(SITES)
        wait_for(online, 60, "both sites online", root / "site-a.log")
        yield fed
    finally:
        for name in list(fed.procs):
            fed.stop(name)


def job_file(broker: Mosquitto, tmp: Path, name: str, rounds: int, **extra: Any) -> Path:
    return _write(tmp / f"{name}.yaml", {
        "job_id": name, "seed": 3, "rounds": rounds, "round_timeout": 60,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 2, "epochs": 1},
        "model": {"type": "sklearn-sgd"},
        "transport": {"type": "mqtt", "params": {"host": "127.0.0.1",
                                                 "port": broker.plain_port}},
        **extra})


def submit(fed: Federation, path: Path) -> str:
    done = fed.cli("submit", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ended(fed: Federation, job_id: str) -> dict[str, Any] | None:
    job = fed.job(job_id)
    return job if job["state"] in ("finished", "failed", "cancelled") else None
