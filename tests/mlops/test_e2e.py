"""One job with every MLOps integration on: MLflow, S3 checkpoints, Prometheus on the server and
the clients scraped by a real Prometheus, and every Grafana panel's query returning data."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

from foedus.core.message import Message
from foedus.mlops.artifacts import S3Checkpointer, S3Store
from foedus.mlops.metrics import ClientMonitor, ServerMonitor
from foedus.mlops.mlflow import MlflowTracker
from foedus.roles.client import ClientPod
from tests.mlops.conftest import build_job, run_graphs_of
from tests.mlops.test_dashboard import dashboard_panels

pytestmark = pytest.mark.integration


class EpsilonReportingClient(ClientPod):
    """A client that reports a privacy budget, as a client with a DP accountant would."""

    def train(self, model_msg: Message) -> Message:
        update = super().train(model_msg)
        return update.replace(metrics={**update.metrics, "epsilon": 0.5 * self.rounds_trained})


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _query(prom: str, expr: str) -> list[Any]:
    answer = _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


async def test_a_job_with_mlflow_s3_prometheus_and_the_dashboard_all_on(
    mlflow_server: str, s3_endpoint: str, prometheus: Any,
) -> None:
    job_id = f"e2e-{uuid.uuid4().hex[:8]}"
    store = S3Store("foedus-e2e", endpoint_url=s3_endpoint, access_key="test",
                    secret_key="test", create_bucket=True)
    job = build_job(job_id, rounds=3, clients=2, checkpointer=S3Checkpointer(store, job_id),
                    client_class=EpsilonReportingClient)
    tracker = MlflowTracker(tracking_uri=mlflow_server, job_id=job_id, experiment=job_id,
                            params={"rounds": 3}, registered_model=job_id, checkpoint_every=1,
                            model_source=lambda: job.server.params)
    server_monitor = ServerMonitor(job_id=job_id, expected_clients=2)
    job.server_graph.add(tracker, server_monitor)
    job.server_graph.connect("server.events", "mlflow.events")
    job.server_graph.connect("server.events", "prometheus.events")
    monitors: list[ServerMonitor | ClientMonitor] = [server_monitor]
    for client, graph in zip(job.clients, job.client_graphs, strict=True):
        monitor = ClientMonitor(job_id=job_id, client_id=client.client_id)
        graph.add(monitor)
        graph.connect("model_in.out", "prometheus.model")
        graph.connect("client.update", "prometheus.update")
        monitors.append(monitor)
    try:
        targets = [f"127.0.0.1:{m.serve(0)}" for m in monitors]
        prom = prometheus(targets)
        _wait("every target scraped once", lambda: all(
            t["health"] == "up" for t in _get(f"{prom}/api/v1/targets")["data"]["activeTargets"]
        ) and len(_get(f"{prom}/api/v1/targets")["data"]["activeTargets"]) == len(targets))
        await run_graphs_of(job)
        registered = tracker.finish()

        # Prometheus sees the finished job...
        rounds = _wait("the last round in Prometheus", lambda: [
            r for r in _query(prom, f'foedus_round{{fl_job="{job_id}"}}') if r["value"][1] == "3"
        ])
        assert rounds[0]["metric"]["job"] == "foedus"  # the scrape job; ours is fl_job
        # ...and every panel of the dashboard has data for it
        # (pod mode: the server's ``*_seen`` client series need attach(); the clients' own
        # endpoints fill the client panels here)
        for title, exprs in dashboard_panels():
            wanted = [e.replace("$fl_job", job_id) for e in exprs]
            _wait(f"data for panel {title!r}: {wanted}",
                  lambda w=wanted: any(_query(prom, e) for e in w))
    finally:
        for m in monitors:
            m.close()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "server_accuracy")] == [
        1, 2, 3]
    assert client.get_metric_history(tracker.run_id, "clients_epsilon")[-1].value == 1.5
    assert registered is not None
    assert {f.path for f in client.list_artifacts(tracker.run_id, "models")} == {
        "models/round-0001", "models/round-0002", "models/round-0003", "models/final"}
    checkpoint = S3Checkpointer(store, job_id).load()
    assert checkpoint is not None and checkpoint.round == 3
