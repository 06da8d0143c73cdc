"""The runner's result tells the truth about a job: what it learned, and when it learned
nothing."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.runner import chance_accuracy, run_job_sync

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
