"""The coordinator's process for a job's server (``python -m foedus.federation.actor``), gated:
everything that can be ready before the go is, the job's hub included."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from foedus.certs import create_deployment_certs
from tests.conftest import free_port
from tests.waiting import until


def test_a_gated_server_hosts_its_hub_before_the_go_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    certs = create_deployment_certs(tmp_path / "certs", ["client-000"])
    url = f"https://127.0.0.1:{free_port()}"
    job = tmp_path / "server.yaml"
    job.write_text(yaml.safe_dump({
        "job_id": "gated", "rounds": 1, "data": {"dataset": "digits"},
        "clients": {"count": 1}, "model": {"type": "sklearn-sgd"},
        "transport": {"type": "https", "params": {
            "url": url, "actor": "{actor}", "serve_as": "server",
            "serve": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                      "key": str(certs.server_key), "require_client_cert": True},
            "tls": {"ca": str(certs.ca)}}}}))
    go, log = tmp_path / "go", tmp_path / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "foedus.federation.actor", str(job), "--actors", "server",
             "--records", str(tmp_path / "records.jsonl"), "--result",
             str(tmp_path / "result.json"), "--start-when", str(go), "--give-up-after", "120"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=str(certs.ca))
        cert, key = certs.clients["client-000"]
        context.load_cert_chain(str(cert), str(key))

        def hub_answers() -> bool:  # what a site's client does first: read the hub's info
            try:
                with httpx.Client(base_url=url, verify=context, timeout=5) as client:
                    return client.get("/v1/info").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                return False
        asyncio.run(until(hub_answers, "the hub listening before the go", timeout=120))
        assert not go.exists() and proc.poll() is None  # still waiting for the go
        assert "ready: waiting for" in log.read_text()
        assert "HTTPS hub listening on" in log.read_text()
    finally:  # what the coordinator does to a refused job's waiting process
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert not (tmp_path / "records.jsonl").exists()  # no round ran
