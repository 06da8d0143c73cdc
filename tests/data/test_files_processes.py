"""Per-client files across real processes: each `foedus client` runs in a directory holding only
its own CSV, the `foedus server` in one holding only its held-out CSV, and the job still learns."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.data.support import digits_files
from tests.processes import COMMAND, reap, run_server_and_clients
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name


@pytest.mark.integration
def test_client_processes_each_read_only_their_own_file(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    digits_files(tmp_path, 3)
    homes = {}
    for name in ("client-000", "client-001", "client-002", "server"):
        home = tmp_path / name
        home.mkdir()
        source = "holdout" if name == "server" else name
        (tmp_path / f"{source}.csv").rename(home / f"{source}.csv")
        homes[name] = home
    pixels = ", ".join(f"p{i}" for i in range(64))
    job = tmp_path / "job.yaml"
    job.write_text(
        "job_id: own-files\nrounds: 4\nround_timeout: 60\nclients: {count: 3, epochs: 2}\n"
        "data:\n  dataset: csv\n  partition: files\n"
        f"  options: {{path: '{{client}}.csv', label: digit, features: [{pixels}],\n"
        "            classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n"
        "  server_options: {path: holdout.csv}\n"
        f"transport: {{type: mqtt, params: {{host: 127.0.0.1, port: {mosquitto.plain_port}}}}}\n"
    )
    run = run_server_and_clients(
        job, server_cwd=homes["server"],
        client_cwds=[homes[f"client-{i:03d}"] for i in range(3)], timeout=240)
    assert all(r["accepted"] == 3 for r in run.summary["history"])
    assert run.summary["final_accuracy"] >= 0.9


@pytest.mark.integration
def test_swarm_peers_in_separate_processes_each_read_only_their_own_file(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    digits_files(tmp_path, 3)
    homes = []
    for i in range(3):
        home = tmp_path / f"client-{i:03d}"
        home.mkdir()
        (tmp_path / f"client-{i:03d}.csv").rename(home / f"client-{i:03d}.csv")
        (home / "holdout.csv").write_bytes((tmp_path / "holdout.csv").read_bytes())
        homes.append(home)
    pixels = ", ".join(f"p{i}" for i in range(64))
    job = tmp_path / "job.yaml"
    job.write_text(
        "job_id: own-files-swarm\nrounds: 3\nround_timeout: 60\nclients: {count: 3, epochs: 2}\n"
        "data:\n  dataset: csv\n  partition: files\n"
        f"  options: {{path: '{{client}}.csv', label: digit, features: [{pixels}],\n"
        "            classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n"
        "  server_options: {path: holdout.csv}\n"
        "topology: {type: swarm, params: {neighbors: 2}}\n"
        f"transport: {{type: mqtt, params: {{host: 127.0.0.1, port: {mosquitto.plain_port}}}}}\n"
    )
    peers = [
        subprocess.Popen([*COMMAND, "actor", str(job), f"client-{i:03d}"],
                         cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, home in enumerate(homes)
    ]
    try:
        for p in peers:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err  # a peer reading another's file would fail to start
    finally:
        reap(peers)
