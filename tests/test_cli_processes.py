"""`foedus server` and `foedus client` run a job as separate OS processes over a real broker."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from foedus.certs import create_deployment_certs
from tests.conftest import free_port
from tests.processes import COMMAND, reap, run_server_and_clients
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name

ROOT = Path(__file__).parents[1]


@pytest.mark.integration
def test_server_and_three_client_processes_reach_the_demo_accuracy_over_mqtt(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "job_id: processes\nrounds: 10\nround_timeout: 60\nclients: {count: 3}\n"
        "data: {partition: iid}\n"
        f"transport: {{type: mqtt, params: {{host: 127.0.0.1, port: {mosquitto.plain_port}}}}}\n"
    )
    run = run_server_and_clients(job, server_cwd=ROOT, client_cwds=[ROOT] * 3, timeout=240)
    summary = run.summary
    assert summary["rounds"] == 10
    assert all(r["accepted"] == 3 for r in summary["history"])
    assert summary["final_accuracy"] >= 0.90
    for i, err in enumerate(run.client_logs):
        assert "finished after 10 rounds (received " in err  # and what it sent
        # a client process shows its progress: one line per answer it sent
        sent = [line for line in err.splitlines() if line.startswith(f"client-00{i} round")]
        # the local round's example count: what left may carry less (DP sends a weight of 1)
        assert len(sent) == 10 and all(re.search(r"sent its update \(trained on \d+ examples\)",
                                                 line) for line in sent), sent
        # with what it received (the model) and sent (the update) in that round
        moved = [re.search(r"  in (\S+ [kMG]?B) out (\S+ [kMG]?B)$", line) for line in sent]
        assert all(m and m[1] != "0 B" and m[2] != "0 B" for m in moved), sent


@pytest.mark.integration
def test_a_client_without_a_server_says_so_instead_of_waiting_in_silence(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "job_id: no-server\nrounds: 3\nround_timeout: 1\nclients: {count: 2}\n"
        f"transport: {{type: mqtt, params: {{host: 127.0.0.1, port: {mosquitto.plain_port}}}}}\n"
    )
    client = subprocess.Popen([*COMMAND, "client", str(job), "--index", "0"], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert client.stderr is not None
        line = client.stderr.readline()  # the first thing it says, after one round_timeout
        assert line.startswith("foedus: no model from the server of job 'no-server' after")
        assert "is it running, on the same transport (mqtt)?" in line
    finally:
        reap([client])


#: the clients' reconnect budget in the test below: short, so that giving up is quick
RECONNECT_S = 2.0


@pytest.mark.integration
def test_a_client_whose_grpc_hub_is_gone_for_good_exits_2_with_one_line_once_its_budget_is_spent(
    tmp_path: Path,
) -> None:
    out = create_deployment_certs(tmp_path / "certs", ["client-000"]).out
    job = tmp_path / "job.yaml"
    job.write_text(  # the hub lives in the server's process, as docs/transports-grpc-https.md
        f"job_id: hub-gone-{uuid.uuid4().hex[:6]}\nrounds: 50\nround_timeout: 60\n"
        "clients: {count: 1}\ndata: {partition: iid}\n"
        "transport:\n  type: grpc\n  params:\n"
        f"    address: 127.0.0.1:{free_port()}\n    actor: '{{actor}}'\n    serve_as: server\n"
        f"    reconnect_timeout: {RECONNECT_S}\n"
        f"    serve: {{ca: {out}/ca.pem, cert: {out}/server.pem, key: {out}/server.key}}\n"
        f"    tls: {{ca: {out}/ca.pem, cert: '{out}/clients/{{actor}}.pem',\n"
        f"          key: '{out}/clients/{{actor}}.key'}}\n"
    )
    server = subprocess.Popen([*COMMAND, "server", str(job)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    client = subprocess.Popen([*COMMAND, "client", str(job), "--index", "0"], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert client.stderr is not None
        first = client.stderr.readline()  # its first answer left: it holds its subscription
        assert first.startswith("client-000 round   1: sent its update"), first
        server.kill()
        server.wait()
        killed = time.monotonic()
        _, err = client.communicate(timeout=30)  # it used to hang here until killed
        took = time.monotonic() - killed
    finally:
        reap([server, client])
    assert client.returncode == 2, err
    # it retried for its whole budget (retrying ends nothing), then ended promptly
    assert RECONNECT_S <= took < RECONNECT_S + 20, took
    # besides its round lines, one line: what failed and why (said once, not logged first)
    [said] = [line for line in err.splitlines() if not line.startswith("client-000 round")]
    assert said.startswith("foedus: error: pod 'model_in', wire 'run': TransportError: gRPC "
                           "subscription to "), err
    assert f"could not be re-established within {RECONNECT_S}s" in said
