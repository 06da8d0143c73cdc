"""The site's actor process (``python -m foedus.federation.site_actor``) as a real process next
to a real job server: how it ends when the site stops it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from foedus.certs import create_deployment_certs
from foedus.federation.site_actor import STOP_GRACE_S, read_progress
from tests.conftest import free_port
from tests.waiting import until


def test_a_stopped_actor_ends_within_its_grace_even_while_its_hub_is_gone(
        tmp_path: Path) -> None:
    # A job cancelled mid-round: the coordinator stops the job's server (and its hub) and
    # the site stops the client, which is still retrying to publish its update to the hub.
    # The client used to go on retrying for its transport's reconnect timeout (a minute)
    # after SIGTERM, so the site SIGKILLed it after 10 s: no end line (the ledger counted an
    # update more than was sent, which is also what an end without its line means now),
    # and 10 s of heartbeats not sent meanwhile. Now the publish is given up at once and the
    # update it carried is counted as sent, since it may have reached the server.
    certs = create_deployment_certs(tmp_path / "certs", ["client-000"])
    cert, key = certs.clients["client-000"]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "job_id": "stopped", "rounds": 50, "seed": 3, "round_timeout": 60,
        "data": {"dataset": "digits"},
        "clients": {"count": 1, "epochs": 300},  # a round's training takes a while
        "model": {"type": "sklearn-sgd"},
        "transport": {"type": "https", "params": {
            "url": f"https://127.0.0.1:{free_port()}", "actor": "{actor}",
            "serve_as": "server",
            "serve": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                      "key": str(certs.server_key), "require_client_cert": True},
            "tls": {"ca": str(certs.ca), "cert": str(cert), "key": str(key)}}}}))
    progress, client_log = tmp_path / "client.progress", tmp_path / "client.log"
    server_log = tmp_path / "server.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with server_log.open("ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "foedus.cli", "actor", str(job), "server"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path))
        with client_log.open("ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "foedus.federation.site_actor", str(job), "client-000",
                 "--progress", str(progress)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path))
        server, client = procs
        # the server ended round 1 and sent round 2's model, which the client now trains on
        asyncio.run(until(lambda: "round   1/" in server_log.read_text(),
                          "the server's round 1", timeout=60))
        server.kill()
        server.wait()
        asyncio.run(until(lambda: "hub unreachable, retrying" in client_log.read_text(),
                          "the client retrying to publish to the gone hub", timeout=30))
        began = time.monotonic()
        client.send_signal(signal.SIGTERM)
        status = client.wait(timeout=30)
        took = time.monotonic() - began
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert status == 128 + signal.SIGTERM
    # the transport would retry for its reconnect budget (60 s); ending, the process still
    # closes its links and exits, seconds on a loaded machine
    assert took < STOP_GRACE_S + 5, f"{took:.1f}s after SIGTERM"
    # the update being retried is given up at once, and said so: never dropped silently
    log = client_log.read_text()
    assert "was not delivered: the actor was cancelled" in log
    # round 2's update was handed to the transport and never confirmed sent: it may have
    # reached the server (a send in flight), so it counts, in a process that ended cleanly
    assert "round   2: stopped while sending its update; counted as sent" in log
    found = read_progress(progress)
    assert found is not None and found.last_end == 128 + signal.SIGTERM
    assert found.updates == 2 and found.sent_upper == 2
