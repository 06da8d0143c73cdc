"""Topologies are plugins: every command dispatches through the registry, reports rounds the
same way, and refuses what a topology cannot do before anything runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from foedus.config.parts import build_parts
from foedus.config.spec import JobSpec
from foedus.config.topology import topologies, topology_of
from foedus.core.errors import ConfigError
from foedus.runner import run_job_sync
from foedus.topology.hierarchical import leaves_below, parse_tree

ROOT = Path(__file__).resolve().parents[2]
JOB = {
    "job_id": "registry", "rounds": 3, "round_timeout": 20,
    "data": {"dataset": "digits", "partition": "iid"}, "clients": {"count": 4},
}
TREE = {"type": "hierarchical", "params": {"tree": [
    {"edge": "north", "children": ["client-000", "client-001"]},
    {"edge": "south", "children": ["client-002", "client-003"]},
]}}


def foedus(*args: str, job: dict, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return subprocess.run(
        [sys.executable, "-m", "foedus.cli", *args[:1], str(path), *args[1:]],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def test_every_builtin_topology_is_registered() -> None:
    assert {"centralized", "hierarchical", "swarm", "async"} <= set(topologies.names())


def test_a_topology_from_outside_the_package_runs_like_a_builtin_one(tmp_path: Path) -> None:
    env = {"FOEDUS_PLUGINS": "tests.topology.toy_topology"}
    job = JOB | {"topology": {"type": "toy-star", "params": {"hub_timeout": 15}}}
    listed = foedus("actor", job=job, tmp_path=tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["hub", "client-000", "client-001", "client-002",
                                     "client-003"]
    run = foedus("run", job=job, tmp_path=tmp_path, **env)
    assert run.returncode == 0, run.stderr
    assert [line.split()[1] for line in run.stderr.splitlines()
            if line.startswith("round")] == ["1/3", "2/3", "3/3"]  # the progress bar
    assert "job 'registry' (toy-star) finished: 3 rounds, 4 clients" in run.stdout
    assert "updates accepted 12, rejected 0" in run.stdout


def test_foedus_run_on_a_tree_reports_its_rounds(tmp_path: Path) -> None:
    run = foedus("run", "--json", job=JOB | {"topology": TREE}, tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["topology"] == "hierarchical" and summary["rounds"] == 3
    assert [r["round"] for r in summary["history"]] == [1, 2, 3]
    assert [r["accepted"] for r in summary["history"]] == [2, 2, 2]  # the root's two edges
    assert summary["updates_accepted"] == 6 and summary["failed"] is None
    # the root's links: each round one model out (a tree's root broadcasts once) and two in
    assert all(r["bytes_out"] > 0 and r["bytes_in"] > r["bytes_out"] for r in summary["history"])
    assert summary["final_accuracy"] > 0.8


@pytest.mark.parametrize(("topology", "command", "message"), [
    ({"type": "swarm"}, ("sim",), "topology swarm: foedus sim cannot simulate it"),
    (TREE, ("sim",), "topology hierarchical: foedus sim cannot simulate it"),
    ({"type": "swarm"}, ("server",), "topology swarm has no server; run its actors with"),
    (TREE, ("server",), "'local' exists only inside one process"),
    (TREE, ("client", "--index", "9"), "client index must be between 0 and 3, got 9"),
])
def test_what_a_topology_cannot_do_is_refused_in_one_line(
    tmp_path: Path, topology: dict, command: tuple[str, ...], message: str,
) -> None:
    done = foedus(*command, job=JOB | {"topology": topology}, tmp_path=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("foedus: error: ") and message in lines[0]


def test_a_job_in_which_no_round_produced_a_model_exits_1_and_says_so(tmp_path: Path) -> None:
    # a deadline no client can meet: every round closes before any update arrives
    job = JOB | {"rounds": 2, "round_timeout": 1e-6}
    done = foedus("run", job=job, tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "FAILED: no round of 2 produced a new model" in done.stdout
    assert "failed: no round of 2 produced a new model" in done.stderr


@pytest.mark.parametrize(("topology", "extra", "message"), [
    ({"type": "swarm"}, {"pipeline": [{"type": "zstd"}]}, "pipeline: swarm peers"),
    ({"type": "swarm"}, {"mlops": {"prometheus": {"port": 0}}},
     "mlops: topology swarm has no server that could use it"),
    ({"type": "async"}, {"checkpoint_dir": "/tmp/x"}, "checkpoint_dir: topology async"),
    ({"type": "async", "params": {"buffer_size": 9}}, {}, "can never arrive from 4 clients"),
    (TREE, {"clients": {"count": 4, "per_round": 2}}, "clients.per_round: not used"),
    (TREE, {"pipeline": [{"type": "zstd"}]}, "pipeline[0] (zstd): its updates need a server-side"),
])
def test_a_job_a_topology_would_run_wrongly_is_refused_when_loaded(
    topology: dict, extra: dict, message: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        JobSpec.from_dict(JOB | extra | {"topology": topology})
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("extra", "message"), [
    ({"aggregator": {"type": "krum", "params": {"f": 1}}},
     "aggregator: krum needs at least 5 updates a round, but there are only 4 clients a round"),
    ({"aggregator": {"type": "krum", "params": {"f": 1}}, "topology": TREE},
     "krum needs at least 5 updates a round, but there are only 2 children of the root"),
    ({"aggregator": "bulyan", "clients": {"count": 8, "per_round": 6}},
     "bulyan needs at least 7 updates a round, but there are only 6 clients a round"),
])
def test_an_aggregator_that_can_never_get_enough_updates_is_refused_when_loaded(
    extra: dict, message: str,
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        JobSpec.from_dict(JOB | extra)


@pytest.mark.parametrize(("model", "aggregator", "message"), [
    ("federated-forest", "fedavg", "'fedavg' combines parameters, but model 'federated-forest' "
     "sends forest-histograms; use forest-histograms"),
    ("sklearn-random-forest", "median", "use tree-bagging"),
    ("sklearn-sgd", "tree-bagging", "'tree-bagging' combines tree-ensemble, but model "
     "'sklearn-sgd' sends parameters; use bulyan or fedadagrad"),
])
def test_a_model_whose_updates_the_aggregator_cannot_combine_is_refused_before_round_1(
    model: str, aggregator: str, message: str,
) -> None:
    spec = JobSpec.from_dict(JOB | {"model": model, "aggregator": aggregator})
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_parts(spec)


def test_a_process_without_the_server_starts_no_mlops() -> None:
    spec = JobSpec.from_dict(JOB | {"mlops": {"prometheus": {"port": 0}}})
    assert build_parts(spec).mlops is not None  # where the server runs
    assert build_parts(spec, clients=(0,), server_data=False).mlops is None


def test_a_tree_bounds_each_clients_claim_and_each_edge_by_the_clients_below_it() -> None:
    tree = {"type": "hierarchical", "params": {"tree": [
        {"edge": "north", "children": ["client-000", {"edge": "deep", "children": [
            "client-001", "client-002"]}]},
        "client-003"]}}
    assert leaves_below(parse_tree(tree["params"]["tree"])) == {"north": 3, "deep": 2}
    honest = run_job_sync(JobSpec.from_dict(
        JOB | {"topology": tree, "clients": {"count": 4, "max_examples": 400}}))
    assert [r.accepted for r in honest.history] == [2, 2, 2]  # ~360 rows each: all admitted
    poisoned = run_job_sync(JobSpec.from_dict(
        JOB | {"topology": tree, "clients": {"count": 4, "max_examples": 100}}))
    edges = poisoned.records["deep"] + poisoned.records["north"]
    assert all(r["rejected"].get("too_many_examples") for r in edges)
    assert poisoned.history[0].rejected.get("too_many_examples") == 1  # client-003 at the root


def test_the_topology_is_built_from_the_registry_with_its_params() -> None:
    spec = JobSpec.from_dict(JOB | {"topology": {"type": "async", "params": {"versions": 7}}})
    topology = topology_of(spec)
    assert topology.name == "async" and topology.rounds(spec) == 7
