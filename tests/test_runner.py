"""The runner's result tells the truth about a job: what it learned, and when it learned
nothing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly
from foedus.core.errors import PodError, TransportError
from foedus.core.graph import Graph
from foedus.core.pod import Pod
from foedus.core.runtime import Runtime
from foedus.runner import JobResult, chance_accuracy, run_assembly, run_job_sync

JOB = {"job_id": "runner", "rounds": 2, "clients": {"count": 3},
       "data": {"dataset": "digits", "partition": "iid"}}


def test_chance_is_the_share_of_the_commonest_label() -> None:
    assert chance_accuracy(np.array([0, 1, 1, 2])) == 0.5


def test_a_model_that_learned_nothing_is_flagged_as_at_chance_level() -> None:
    pytest.importorskip("torch")
    # a learning rate of 0 leaves the initial, random weights: a near-random classifier
    frozen = JOB | {"model": {"type": "torch-mlp", "params": {"lr": 0.0}}}
    result = run_job_sync(JobSpec.from_dict(frozen))
    assert result.failure is None  # rounds produced models: the job ran as configured...
    assert result.near_chance is not None  # ...but the summary must not pass for learning
    assert "at chance level" in result.summary()["warning"]


def test_a_model_that_learned_carries_no_warning() -> None:
    result = run_job_sync(JobSpec.from_dict(JOB))
    assert result.final_metrics["accuracy"] > result.extra["chance_accuracy"] + 0.5
    assert result.near_chance is None and result.summary()["warning"] is None


def test_a_server_that_stopped_before_round_1_is_a_failed_job() -> None:
    """A round guard (a spent privacy budget) may stop the server before its first round: no
    model was trained, so the job failed, whatever its exit path."""
    stopped = JobResult(job_id="j", clients=3, history=[], params={}, duration_s=0.1,
                        extra={"stop_reason": "privacy budget exhausted: epsilon 8.0 spent"})
    assert stopped.failure == "stopped before round 1: privacy budget exhausted: epsilon 8.0 spent"
    clients_only = JobResult(job_id="j", clients=3, history=[], params={}, duration_s=0.1,
                             extra={"stop_reason": None})
    assert clients_only.failure is None  # a process of clients keeps no rounds: not a failure


class _LostHub(Pod):
    """A pod whose run fails on purpose, as a client's reader does whose hub is gone."""

    async def run(self) -> None:
        raise TransportError(f"{self.name}: the hub is gone")


async def test_every_actor_whose_run_failed_is_said_not_only_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two actors of one process (``foedus actor a,b``) lose their hub: the first failure is
    raised, and the second is an ERROR line naming its actor, not a WARNING nobody sees."""
    runtimes = {actor: Runtime(Graph(actor).add(_LostHub(f"{actor}-reader")))
                for actor in ("client-000", "client-001")}
    assembly = Assembly(runtimes=runtimes, leader=None, history=list, params=lambda: None)
    with pytest.raises(PodError, match="client-000-reader: the hub is gone"):
        await asyncio.wait_for(run_assembly(assembly), 10)
    errors = [r.getMessage() for r in caplog.records
              if r.levelname == "ERROR" and r.name == "foedus.runner"]
    assert errors == ["actor client-001 also failed: pod 'client-001-reader', wire 'run': "
                      "TransportError: client-001-reader: the hub is gone"]
