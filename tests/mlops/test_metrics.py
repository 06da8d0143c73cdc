"""Prometheus /metrics endpoints of the server and the clients, scraped over HTTP."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.mlops.metrics import ClientMonitor, ServerMonitor
from foedus.roles.server import RoundRecord
from foedus.runner import run_job
from tests.mlops.conftest import build_job, run_graphs_of, scrape


def _series(job: str, **labels: str) -> str:
    pairs = {"fl_job": job, **labels}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(pairs.items())) + "}"


async def test_server_monitor_pod_exports_rounds_latency_updates_clients_and_bytes() -> None:
    job = build_job("prom-server", rounds=3, clients=3)
    monitor = ServerMonitor(job_id="prom-server", expected_clients=3)
    job.server_graph.add(monitor).connect("server.events", "prometheus.events")
    port = monitor.serve(0)
    try:
        before = scrape(port)
        assert before["foedus_round" + _series("prom-server")] == 0  # series exist from the start
        await run_graphs_of(job)
        after = scrape(port)
    finally:
        monitor.close()
    s = _series("prom-server")
    assert after["foedus_round" + s] == 3
    assert after["foedus_round_duration_seconds_count" + s] == 3
    assert after["foedus_round_duration_seconds_sum" + s] == pytest.approx(
        sum(r.duration_s for r in job.server.history))
    assert after["foedus_updates_accepted_total" + s] == 9
    assert after["foedus_rounds_total" + _series("prom-server", status="ok")] == 3
    assert after["foedus_clients_connected" + s] == 3
    assert after["foedus_clients_missing" + s] == 0
    accuracy = job.server.history[-1].metrics["accuracy"]
    assert after["foedus_model_metric" + _series("prom-server", name="accuracy")] == accuracy
    links = _series("prom-server", fl_role="server", actor="server")
    uplink = job.server_graph.pods["model_out"]
    assert after["foedus_bytes_sent_total" + links] == uplink.bytes_out > 0  # type: ignore[attr-defined]
    assert after["foedus_messages_received_total" + links] == 9


def test_rejected_updates_are_counted_by_reason_and_epsilon_is_exported() -> None:
    monitor = ServerMonitor(job_id="prom-rej")
    monitor.observe(RoundRecord(1, accepted=2, rejected={"stale_round": 2, "bad_shape": 1},
                                client_metrics={"epsilon": 0.5}))
    monitor.observe(RoundRecord(2, accepted=2, rejected={"stale_round": 1},
                                client_metrics={"epsilon": 1.0}))
    port = monitor.serve(0)
    try:
        values = scrape(port)
    finally:
        monitor.close()
    assert values["foedus_updates_rejected_total" + _series("prom-rej", reason="stale_round")] == 3
    assert values["foedus_updates_rejected_total" + _series("prom-rej", reason="bad_shape")] == 1
    assert values["foedus_privacy_epsilon" + _series("prom-rej")] == 1.0
    assert values["foedus_clients_connected" + _series("prom-rej")] == 2


async def test_client_monitor_pods_export_each_clients_rounds_latency_and_bytes() -> None:
    job = build_job("prom-clients", rounds=2, clients=2)
    monitors = []
    for client, graph in zip(job.clients, job.client_graphs, strict=True):
        monitor = ClientMonitor(job_id="prom-clients", client_id=client.client_id)
        graph.add(monitor)
        graph.connect("model_in.out", "prometheus.model")
        graph.connect("client.update", "prometheus.update")
        monitor.serve(0)
        monitors.append(monitor)
    try:
        await run_graphs_of(job)
        scraped = [scrape(m.port) for m in monitors]  # type: ignore[arg-type]
    finally:
        for m in monitors:
            m.close()
    for client, values in zip(job.clients, scraped, strict=True):
        me = _series("prom-clients", client=client.client_id)
        assert values["foedus_client_round" + me] == 2
        assert values["foedus_client_round_duration_seconds_count" + me] == 2
        assert values["foedus_client_updates_total" + _series(
            "prom-clients", client=client.client_id, status="ok")] == 2
        assert ("foedus_client_local_metric" + _series(
            "prom-clients", client=client.client_id, name="train_loss")) in values
        links = _series("prom-clients", fl_role="client", actor=client.client_id)
        assert values["foedus_bytes_received_total" + links] > 0
        assert values["foedus_messages_sent_total" + links] == 2


async def test_server_monitor_as_a_run_job_listener_counts_rounds() -> None:
    spec = JobSpec.from_dict({"job_id": "prom-listener", "rounds": 2, "clients": {"count": 2},
                              "data": {"dataset": "iris"}})
    monitor = ServerMonitor(job_id=spec.job_id, expected_clients=2)
    await run_job(spec, on_round=monitor.listener())
    text = monitor.exposition()
    assert 'foedus_round{fl_job="prom-listener"} 2.0' in text
    assert 'foedus_updates_accepted_total{fl_job="prom-listener"} 4.0' in text


def test_a_closed_endpoint_stops_answering() -> None:
    monitor = ServerMonitor(job_id="prom-close")
    port = monitor.serve(0)
    monitor.close()
    monitor.close()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_port_in_use_is_one_configuration_error() -> None:
    """It used to end the job in an OSError traceback (exit 1)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monitor = ServerMonitor(job_id="busy")
        with pytest.raises(ConfigError, match=rf"^mlops.prometheus: cannot serve /metrics on "
                                              rf"127.0.0.1:{port}: Address already in use; "):
            monitor.serve(port)
    assert monitor.close() is False  # nothing was started, nothing to stop
