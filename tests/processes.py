"""A job run as separate ``foedus`` processes: one server and its clients, each in a directory
of its own choosing, none of them outliving the test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMAND = [sys.executable, "-m", "foedus.cli"]


@dataclass
class ProcessRun:
    summary: dict[str, Any]  # what `foedus server --json` printed
    client_logs: list[str]  # each client's stderr


def run_server_and_clients(job: Path, *, server_cwd: Path, client_cwds: Sequence[Path],
                           timeout: float) -> ProcessRun:
    """Start one `foedus client` per directory in ``client_cwds``, run `foedus server` to the
    end, and check that every process exited cleanly (the clients saw the stop message)."""
    clients = [
        subprocess.Popen([*COMMAND, "client", str(job), "--index", str(i)], cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, cwd in enumerate(client_cwds)
    ]
    try:
        server = subprocess.run([*COMMAND, "server", str(job), "--json"], cwd=server_cwd,
                                capture_output=True, text=True, timeout=timeout)
        assert server.returncode == 0, server.stderr
        logs = []
        for c in clients:
            _, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
            logs.append(err)
        return ProcessRun(json.loads(server.stdout), logs)
    finally:
        reap(clients)


def reap(procs: Sequence[subprocess.Popen[str]]) -> None:
    """Kill whichever of ``procs`` still runs, and wait for it."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
