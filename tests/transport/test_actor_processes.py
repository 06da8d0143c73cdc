"""Every actor process of a job ends when the job ends, over the hub transports (gRPC, HTTPS).

One ``foedus actor JOB IDS`` process per site, all from one job file whose transport hosts the hub
in the root's process (``serve_as: server``, as docs/transports-grpc-https.md says), with mutual
TLS, one certificate per actor and ``verify_sender``. Two shapes:

* hierarchical, 2 edges x 2 clients: the root, and one process per site (an edge with its
  clients). The job's end has to travel *through the root's hub after the root is done*: the
  edges relay the root's ``stop`` to their clients on the edges' own topics. This used to leave
  the sites running forever (the hub closed under the relay, and the relayed stop lacked the
  run id clients obey);
* centralized: the server, and the clients in two processes.

Each test asserts that every process exits with status 0 within a bound, that the root ran
every round with every child answering, and that every client trained every round.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from foedus.certs import DeploymentCerts, create_deployment_certs
from tests.conftest import free_port
from tests.processes import COMMAND, reap

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3
CLIENTS = [f"client-{i:03d}" for i in range(4)]
#: the whole job, process start-up included, on a shared and loaded 2-core machine; a hang
#: (the bug this guards against) lasts forever, a normal run ~20 s
BOUND_S = 180.0

SHAPES: dict[str, tuple[str, list[list[str]]]] = {
    # topology section, and the actor groups run as processes (the root's first)
    "hierarchical": (
        "topology:\n  type: hierarchical\n  params:\n    tree:\n"
        "      - {edge: north, children: [client-000, client-001]}\n"
        "      - {edge: south, children: [client-002, client-003]}\n",
        [["server"], ["north", "client-000", "client-001"],
         ["south", "client-002", "client-003"]],
    ),
    "centralized": ("", [["server"], ["client-000", "client-001"],
                         ["client-002", "client-003"]]),
}


@pytest.fixture(scope="module")
def actor_certs(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCerts:
    """A CA, the server's certificate and one per actor that connects (CN = actor id)."""
    return create_deployment_certs(tmp_path_factory.mktemp("actor-certs"),
                                   ["north", "south", *CLIENTS])


def job_file(path: Path, kind: str, topology: str, certs: DeploymentCerts) -> Path:
    """The one job file every process runs, as a deployment would write it."""
    endpoint = (f"address: 127.0.0.1:{free_port()}" if kind == "grpc"
                else f"url: https://127.0.0.1:{free_port()}")
    out = certs.out
    path.write_text(
        f"job_id: {kind}-actors-{uuid.uuid4().hex[:6]}\n"
        f"rounds: {ROUNDS}\nround_timeout: 60\nseed: 0\n"
        f"clients: {{count: {len(CLIENTS)}}}\n"
        "data: {dataset: digits, partition: iid}\n"
        f"{topology}"
        "transport:\n"
        f"  type: {kind}\n"
        "  params:\n"
        f"    {endpoint}\n"
        "    actor: '{actor}'\n"
        "    serve_as: server\n"
        f"    serve: {{ca: {out}/ca.pem, cert: {out}/server.pem, key: {out}/server.key,"
        " require_client_cert: true}\n"
        "    verify_sender: true\n"
        f"    tls: {{ca: {out}/ca.pem, cert: '{out}/clients/{{actor}}.pem',"
        f" key: '{out}/clients/{{actor}}.key'}}\n"
    )
    return path


def run_processes(job: Path, groups: list[list[str]]) -> list[tuple[int, dict[str, Any], str]]:
    """Start one ``foedus actor`` per group (the root's last, after the sites are launched) and
    wait for all of them, each up to what is left of :data:`BOUND_S`: (status, summary,
    stderr) per group, in order."""
    began = time.monotonic()
    procs = [
        subprocess.Popen([*COMMAND, "actor", str(job), ",".join(group), "--json"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for group in [*groups[1:], groups[0]]
    ]
    procs = [procs[-1], *procs[:-1]]
    try:
        results = []
        for group, proc in zip(groups, procs, strict=True):
            left = BOUND_S - (time.monotonic() - began)
            try:
                out, err = proc.communicate(timeout=max(left, 1.0))
            except subprocess.TimeoutExpired:
                pytest.fail(f"actors {group} still running {BOUND_S:.0f}s after the start")
            assert proc.returncode == 0, f"actors {group} exited {proc.returncode}:\n{err}"
            results.append((proc.returncode, json.loads(out), err))
        return results
    finally:
        reap(procs)


# each transport with one shape: the hub's linger and the relayed stop are the same code for
# both shapes, and every case starts five processes (the suite's time budget)
@pytest.mark.parametrize(("kind", "shape"), [("grpc", "hierarchical"), ("https", "centralized"),
                                             ("https", "hierarchical")])
def test_every_actor_process_exits_when_the_job_ends(
    kind: str, shape: str, actor_certs: DeploymentCerts, tmp_path: Path,
) -> None:
    topology, groups = SHAPES[shape]
    job = job_file(tmp_path / "job.yaml", kind, topology, actor_certs)
    (_, root, _), *sites = run_processes(job, groups)
    assert root["rounds"] == ROUNDS
    children = len(groups) - 1 if shape == "hierarchical" else len(CLIENTS)
    assert all(r["accepted"] == children and not r["rejected"] for r in root["history"]), \
        root["history"]
    for (_, summary, err), group in zip(sites, groups[1:], strict=True):
        trained = summary["rounds_trained"]
        assert {a: trained[a] for a in group if a in CLIENTS} == \
            {a: ROUNDS for a in group if a in CLIENTS}, err
