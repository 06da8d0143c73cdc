"""`foedus server` and `foedus client` run a job as separate OS processes over a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import run_server_and_clients
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
    for err in run.client_logs:
        assert "finished after 10 rounds" in err
