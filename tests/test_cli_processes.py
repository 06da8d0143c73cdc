"""`foedus server` and `foedus client` run a job as separate OS processes over a real broker."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

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
        assert len(sent) == 10 and all("sent its update" in line for line in sent)
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
