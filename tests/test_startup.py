"""What a job's cold start imports: only what the job uses.

A fresh interpreter runs a one-round torch job, then a one-round scikit-learn job, and reports
after each which heavy modules were imported. They are what made a small job's start-up slow
(bench/cold_start.py measures it; no timing here): ``torch._dynamo`` (pulled in by
constructing any ``torch.optim`` optimiser), and ``sklearn.datasets`` (pandas and every
fetcher) or scikit-learn itself just to read and split the bundled digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ["torch", "torch._dynamo", "sklearn", "sklearn.linear_model", "sklearn.datasets",
           "scipy", "pandas"]

JOBS = f"""
import json, sys
from foedus.config.spec import JobSpec
from foedus.runner import run_job_sync
for model in ("torch-mlp", "sklearn-sgd"):
    job = {{"job_id": "cold", "rounds": 1, "clients": {{"count": 2}}, "model": {{"type": model}}}}
    assert run_job_sync(JobSpec.from_dict(job)).final_metrics, "no model"
    print(json.dumps([m for m in {WATCHED!r} if m in sys.modules]))
"""


@pytest.fixture(scope="module")
def imported() -> list[list[str]]:
    """The watched modules imported after the torch job, then after the scikit-learn job."""
    pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", JOBS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]


def test_a_torch_job_on_digits_imports_neither_dynamo_nor_scikit_learn(
    imported: list[list[str]],
) -> None:
    assert imported[0] == ["torch"]


def test_a_scikit_learn_job_on_digits_does_not_import_its_dataset_fetchers(
    imported: list[list[str]],
) -> None:
    assert "sklearn.linear_model" in imported[1]
    assert "sklearn.datasets" not in imported[1]


#: what a plain centralized job never uses: the secure sum, FedBuff, swarm and tree topologies'
#: machinery, checkpoints (none asked), the report writers (no --history-csv / --plot), and
#: the federation's commands
UNUSED_BY_A_PLAIN_JOB = [
    "foedus.privacy.secagg", "foedus.privacy.secagg_pods", "foedus.topology.secure_sum",
    "foedus.roles.secure_server", "foedus.roles.async_server", "foedus.topology.asynchronous",
    "foedus.roles.peer", "foedus.topology.swarm", "foedus.topology.hierarchical",
    "foedus.roles.edge", "foedus.roles.checkpoint", "foedus.report", "foedus.federation",
]

COMMAND = """
import json, sys
from foedus.cli import main
sys.argv = ["foedus", "run", sys.argv[1], "--rounds", "1"]
status = main()
print(json.dumps([status, sorted(m for m in sys.modules if m.startswith("foedus."))]))
"""


def command_imports(tmp_path: Path, job: str) -> list[str]:
    """The foedus modules ``foedus run JOB --rounds 1`` imported, run as the command runs it."""
    path = tmp_path / "job.yaml"
    path.write_text(job)
    env = {k: v for k, v in os.environ.items() if k != "FOEDUS_PLUGINS"}
    env |= {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", COMMAND, str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 0, done.stderr
    return list(modules)


def test_a_centralized_job_imports_no_secure_sum_swarm_or_async_machinery(
    tmp_path: Path,
) -> None:
    modules = command_imports(tmp_path, (ROOT / "examples" / "digits-sklearn.yaml").read_text())
    assert "foedus.topology.centralized" in modules
    assert sorted(set(UNUSED_BY_A_PLAIN_JOB) & set(modules)) == []


def test_a_secure_sum_job_imports_its_machinery(tmp_path: Path) -> None:
    """The other side: the watched names are the modules such jobs do import."""
    job = ("job_id: sum\nclients: {count: 3}\n"
           "pipeline: [{type: secure-sum, params: {max_dropouts: 1}}]\n")
    modules = command_imports(tmp_path, job)
    assert {"foedus.privacy.secagg_pods", "foedus.topology.secure_sum",
            "foedus.roles.secure_server"} <= set(modules)
