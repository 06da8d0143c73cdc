"""Real MLOps servers on loopback (MLflow, an S3 server, Prometheus) and a small job builder.

Servers are session-scoped: MLflow takes several seconds to start (database migrations), and
every test uses its own experiment, bucket prefix or job id, so sharing them is safe. Each is
started in its own process group and the whole group is killed afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.core.graph import Graph
from foedus.data.datasets import Dataset, load_dataset
from foedus.data.partition import partition
from foedus.models.base import build_model
from foedus.roles.checkpoint import Checkpointer
from foedus.roles.client import ClientPod
from foedus.roles.server import ServerPod
from foedus.topology.centralized import client_graph, server_graph
from foedus.transport.local import LocalTransport
from tests.conftest import free_port

_BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed (see docs/mlops.md for the CI packages)")
    return found


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}:\n"
                               + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: not ready after {timeout}s:\n" + log.read_text()[-3000:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group this fixture started (the server and its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):  # workers may outlive the leader briefly
        os.killpg(proc.pid, signal.SIGKILL)


def _start(args: list[str], log: Path, env: dict[str, str] | None = None,
           ) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, local artifact store); yields its URL."""
    exe = _tool("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = root / "server.log"
    proc = _start([
        exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
    ], log, env={"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                 # no job runner: its seven huey consumers (unused by foedus) each import MLflow
                 # and then poll, together 0.6 of a core for as long as the server lives
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        # MLflow imports for many seconds; on a busy machine more than two minutes were seen
        _wait_http(f"{url}/health", proc, log, timeout=300)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto in server mode, in memory); yields its endpoint URL."""
    exe = _tool("moto_server")
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = root / "server.log"
    proc = _start([exe, "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/moto-api/", proc, log, timeout=30)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """Start a real Prometheus scraping the given ``host:port`` targets every 0.5 s; the
    callable returns its URL. Stopped after the test."""
    exe = _tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        config = tmp_path / "prometheus.yml"
        quoted = ", ".join(f'"{t}"' for t in targets)
        config.write_text(
            "global: {scrape_interval: 500ms, evaluation_interval: 500ms}\n"
            "scrape_configs:\n"
            f"  - job_name: foedus\n    static_configs: [{{targets: [{quoted}]}}]\n"
        )
        port = free_port()
        log = tmp_path / "prometheus.log"
        proc = _start([
            exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ], log)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/-/ready", proc, log, timeout=30)
        return url

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


# ---- a small job built by hand, so tests can add MLOps pods to the graphs --------------------
@dataclass
class Job:
    server: ServerPod
    server_graph: Graph
    clients: list[ClientPod]
    client_graphs: list[Graph]
    transport: LocalTransport
    shares: list[Dataset]


def build_job(
    job_id: str, *, rounds: int = 3, clients: int = 3, checkpointer: Checkpointer | None = None,
    seed: int = 0, client_class: type[ClientPod] = ClientPod,
) -> Job:
    """A centralized job on the in-process transport: synthetic data, SGD logistic regression."""
    train, test, spec = load_dataset("synthetic", n_samples=600, n_features=8, n_classes=3,
                                     seed=seed)
    shares = partition(train, clients, scheme="iid", alpha=0.5, seed=seed)
    evaluator = build_model("sklearn-sgd", spec, seed)

    def evaluate(params: dict[str, np.ndarray]) -> dict[str, float]:
        evaluator.set_params(params)
        return evaluator.evaluate(test)

    server = ServerPod(
        job_id=job_id, initial_params=evaluator.get_params(), aggregator=FedAvg(),
        rounds=rounds, expected_clients=clients, round_timeout=30, evaluate=evaluate,
        checkpointer=checkpointer,
    )
    transport = LocalTransport()
    pods = [
        client_class(client_id=f"client-{i:03d}", model=build_model("sklearn-sgd", spec, seed),
                     data=share)
        for i, share in enumerate(shares)
    ]
    return Job(
        server, server_graph(server, transport), pods,
        [client_graph(c, transport, job_id) for c in pods], transport, shares,
    )


async def run_graphs_of(job: Job) -> None:
    """Run the job's (possibly extended) graphs to the end, then close the transport."""
    from foedus.core.runtime import Runtime, run_graphs

    server_rt = Runtime(job.server_graph)
    try:
        await run_graphs(server_rt, *(Runtime(g) for g in job.client_graphs))
    finally:
        await job.transport.close()
    if server_rt.stats.failures:
        raise server_rt.stats.failures[0]


def scrape(port: int) -> dict[str, float]:
    """GET /metrics and parse it with prometheus_client's own parser: 'name{labels}' -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out
