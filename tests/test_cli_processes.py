"""`foedus server` and `foedus client` run a job as separate OS processes over a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    command = [sys.executable, "-m", "foedus.cli"]
    clients = [
        subprocess.Popen([*command, "client", str(job), "--index", str(i)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    try:
        server = subprocess.run([*command, "server", str(job), "--json"], cwd=ROOT,
                                capture_output=True, text=True, timeout=240)
        assert server.returncode == 0, server.stderr
        summary = json.loads(server.stdout)
        assert summary["rounds"] == 10
        assert all(r["accepted"] == 3 for r in summary["history"])
        assert summary["final_accuracy"] >= 0.90
        for c in clients:
            _, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
            assert "finished after 10 rounds" in err
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
