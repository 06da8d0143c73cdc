"""``model: split-nn`` of the vertical topology: job files and their refusals, each feature
party in its own process over Mosquitto, and a feature party, then the label party, killed
mid-job over Kafka, each resuming from its checkpoint (and the log) and ending with the
uninterrupted run's result."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.roles.server import RoundRecord
from foedus.runner import run_actors, run_job
from tests.processes import reap
from tests.transport.kafka_fixtures import Tansu, tansu
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs", "tansu"]  # fixtures used by name

pytest.importorskip("private_set_intersection.python")
pytest.importorskip("torch")

COMMAND = [sys.executable, "-m", "foedus.cli"]
THREE = {"hospital": {"columns": list(range(0, 10))}, "lab": {"columns": list(range(10, 20))},
         "insurer": {"columns": list(range(20, 30))}}


def _job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_id": "split-test", "rounds": 2, "round_timeout": 60,
        "data": {"dataset": "breast_cancer"},
        "topology": {"type": "vertical", "params": {
            "label_party": "hospital", "model": "split-nn", "batch_size": 64,
            "parties": {"hospital": {"columns": list(range(0, 15))},
                        "lab": {"columns": list(range(15, 30))}}}}}
    for key, value in changes.items():
        if key.startswith("params.") and value is None:
            del job["topology"]["params"][key[7:]]
        elif key.startswith("params."):
            job["topology"]["params"][key[7:]] = value
        else:
            job[key] = value
    return job


@pytest.mark.parametrize(("changes", "message"), [
    ({"params.model": "cnn"}, "params.model: got 'cnn'; allowed: linear, split-nn"),
    ({"params.key_bits": 1024}, "params.key_bits: only model linear takes it; got 1024 with "
                                "model split-nn"),
    ({"params.model": "linear", "params.hidden": [8]},
     "params.hidden: only model split-nn takes it; got [8] with model linear"),
    ({"params.combine": "max"}, "params.combine: got 'max'; allowed: concat, sum"),
    ({"params.hidden": [0]}, "params.hidden: expected a list of layer widths"),
    ({"params.batch_size": 0}, "params.batch_size: expected an integer from 1"),
    ({"params.combine": "sum", "params.secure_sum": True},
     "params.secure_sum: needs combine: sum (got sum) and two feature parties or more (got 1)"),
    ({"params.secure_sum": True, "params.parties": THREE},
     "params.secure_sum: needs combine: sum (got concat)"),
    ({"params.secure_sum": True, "params.combine": "sum", "params.parties": THREE,
      "checkpoint_dir": "."}, "checkpoint_dir: a feature party cannot resume in the middle"),
    ({"pipeline": [{"type": "clip", "params": {"clip_norm": 1.0}}]},
     "pipeline: got ['clip']; allowed with model split-nn: nothing or one split-noise stage"),
    ({"pipeline": [{"type": "split-noise", "params": {}}]},
     "pipeline.split-noise: give embedding_noise, gradient_noise or both"),
    ({"pipeline": [{"type": "split-noise", "params": {"embedding_noise": -1}}]},
     "pipeline.split-noise.embedding_noise: expected a number > 0, got -1"),
    ({"params.model": "linear", "params.batch_size": None, "pipeline": [{"type": "split-noise",
                                              "params": {"gradient_noise": 1.0}}]},
     "pipeline: vertical parties exchange encrypted residuals"),
])
def test_a_split_job_the_topology_cannot_run_is_refused_in_one_line(
        changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        JobSpec.from_dict(_job(**changes))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_split_job_with_noise_and_a_checkpoint_dir_is_accepted(tmp_path: Path) -> None:
    spec = JobSpec.from_dict(_job(checkpoint_dir=str(tmp_path), pipeline=[
        {"type": "split-noise", "params": {"embedding_noise": 1.0, "gradient_noise": 1.0}}]))
    assert spec.topology.params["model"] == "split-nn"


@pytest.mark.integration
async def test_each_feature_party_in_its_own_process_over_mosquitto(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    job = _job(job_id="split-mqtt", transport={"type": "mqtt", "params": {
        "host": "127.0.0.1", "port": mosquitto.plain_port}}, **{"params.parties": THREE})
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(job))
    others = [subprocess.Popen([*COMMAND, "actor", str(path), name, "--json"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for name in ("lab", "insurer")]
    try:  # the label party here, in the test's process (its imports are paid already)
        result = await run_actors(JobSpec.from_dict(job), ["hospital"], timeout=240)
        assert len(result.history) == 2 and result.final_metrics["accuracy"] >= 0.9
        assert result.extra["stop_reason"] is None
        for proc in others:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert json.loads(out)["stop_reason"] is None
    finally:
        reap(others)


@pytest.mark.integration
async def test_a_feature_party_killed_mid_job_over_kafka_resumes_to_the_same_result(
        tansu: Tansu, tmp_path: Path) -> None:
    rounds = 3
    uninterrupted = await run_job(JobSpec.from_dict(_job(rounds=rounds)))
    job = _job(job_id="split-kafka", rounds=rounds, round_timeout=120,
               checkpoint_dir=str(tmp_path),
               transport={"type": "kafka", "params": {"bootstrap": tansu.bootstrap}})
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(job))

    def lab() -> subprocess.Popen[str]:
        return subprocess.Popen([*COMMAND, "actor", str(path), "lab", "--json"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [lab()]

    def kill_after_the_first_epoch(record: RoundRecord) -> None:
        if record.round == 1:  # the next batch is asked while lab is down: the log keeps it
            procs[0].kill()
            procs[0].wait()
            procs.append(lab())

    try:
        result = await run_actors(JobSpec.from_dict(job), ["hospital"],
                                  on_round=kill_after_the_first_epoch, timeout=240)
        assert len(procs) == 2 and procs[0].returncode == -9
        out, err = procs[1].communicate(timeout=60)
        assert procs[1].returncode == 0, err
        assert json.loads(out)["stop_reason"] is None, err
    finally:
        reap(procs)
    assert result.extra["stop_reason"] is None and len(result.history) == rounds
    assert result.final_metrics["accuracy"] == uninterrupted.final_metrics["accuracy"]
    assert result.final_metrics["loss"] == pytest.approx(uninterrupted.final_metrics["loss"],
                                                         rel=1e-6)


@pytest.mark.integration
async def test_the_label_party_killed_mid_job_over_kafka_resumes_to_the_same_result(
        tansu: Tansu, tmp_path: Path) -> None:
    rounds = 3
    uninterrupted = await run_job(JobSpec.from_dict(_job(rounds=rounds, **{
        "params.batch_size": 16})))
    job = _job(job_id="split-kafka-label", rounds=rounds, round_timeout=120,
               checkpoint_dir=str(tmp_path), **{"params.batch_size": 16},
               transport={"type": "kafka", "params": {"bootstrap": tansu.bootstrap}})
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(job))

    def hospital(*json: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*COMMAND, "actor", str(path), "hospital", *json],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    procs = [hospital()]  # without --json: it prints a line per epoch

    async def kill_after_the_first_epoch() -> None:
        """The label party prints an epoch once its checkpoint holds it: killed in epoch 2."""
        while not (line := await asyncio.to_thread(procs[0].stderr.readline)  # type: ignore[union-attr]
                   ).startswith("round   1/"):
            assert line, "the label party ended before its first epoch"
        procs[0].kill()
        procs[0].wait()
        procs.append(hospital("--json"))

    killer = asyncio.create_task(kill_after_the_first_epoch())
    try:
        lab = await run_actors(JobSpec.from_dict(job), ["lab"], timeout=240)
        await killer
        assert len(procs) == 2 and procs[0].returncode == -9  # killed mid-job, not finished
        out, err = procs[1].communicate(timeout=60)
        assert procs[1].returncode == 0, err
    finally:
        killer.cancel()
        reap(procs)
    assert lab.extra["stop_reason"] is None
    result = json.loads(out)
    assert result["stop_reason"] is None and result["rounds"] == rounds, err
    assert result["final_accuracy"] == uninterrupted.final_metrics["accuracy"]
    assert result["final_loss"] == pytest.approx(uninterrupted.final_metrics["loss"], rel=1e-6)
