"""Whole federated jobs with DP, built from job-file pipeline entries via run_job."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from foedus.config.spec import JobSpec
from foedus.privacy.accountant import SamplingSpec, epsilon_after
from foedus.runner import run_job

CLIENTS, ROUNDS = 10, 8
CHANCE = 0.1  # ten digit classes


def spec(pipeline: list[dict[str, object]], rounds: int = ROUNDS, timeout: float = 30) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": "dp-test", "seed": 0, "rounds": rounds, "round_timeout": timeout,
        "data": {"dataset": "digits", "partition": "iid"}, "clients": {"count": CLIENTS},
        "pipeline": pipeline,
    })


async def test_central_dp_job_learns_well_above_chance_with_a_stated_epsilon() -> None:
    result = await run_job(spec([{"type": "central-dp", "params": {
        "clients_per_round": CLIENTS, "clip_norm": 1.0, "noise_multiplier": 1.0, "seed": 0}}]))
    assert [r.accepted for r in result.history] == [CLIENTS] * ROUNDS
    assert result.final_metrics["accuracy"] > 4 * CHANCE
    epsilon = epsilon_after(ROUNDS, noise_multiplier=1.0, delta=1e-5,
                            sampling=SamplingSpec(CLIENTS, CLIENTS))
    assert 10 < epsilon < 40  # documented in docs/privacy.md: about 16.5 for 8 rounds


async def test_local_dp_job_learns_above_chance() -> None:
    result = await run_job(spec([{"type": "local-dp", "params": {
        "clip_norm": 1.0, "noise_multiplier": 0.3, "seed": 0}}]))
    assert [r.accepted for r in result.history] == [CLIENTS] * ROUNDS
    assert result.final_metrics["accuracy"] > 3 * CHANCE


async def test_central_dp_budget_stops_training_cleanly_before_the_round_that_would_exceed_it(
) -> None:
    z = 1.0
    sampling = SamplingSpec(CLIENTS, CLIENTS)
    budget = (epsilon_after(2, noise_multiplier=z, delta=1e-5, sampling=sampling)
              + epsilon_after(3, noise_multiplier=z, delta=1e-5, sampling=sampling)) / 2
    result = await run_job(spec([{"type": "central-dp", "params": {
        "clients_per_round": CLIENTS, "clip_norm": 1.0, "noise_multiplier": z,
        "budget": budget, "seed": 0}}], rounds=3))
    statuses = [(r.accepted, r.status) for r in result.history]
    # rounds 1-2 fit the budget; the server stops before round 3 and says why
    assert statuses == [(CLIENTS, "ok"), (CLIENTS, "ok")]
    assert "privacy budget exhausted" in result.extra["stop_reason"]
    assert result.history[1].metrics["dp_epsilon"] <= budget


async def test_a_resumed_server_keeps_counting_the_budget_it_already_spent(
    tmp_path: Path,
) -> None:
    stage = [{"type": "central-dp", "params": {
        "clients_per_round": CLIENTS, "clip_norm": 1.0, "noise_multiplier": 1.0, "seed": 0}}]
    first = replace(spec(stage, rounds=2), checkpoint_dir=str(tmp_path))
    before = await run_job(first)
    resumed = await run_job(replace(first, rounds=3))  # same checkpoint directory
    assert [r.round for r in resumed.history] == [1, 2, 3]
    three_rounds = epsilon_after(3, noise_multiplier=1.0, delta=1e-5,
                                 sampling=SamplingSpec(CLIENTS, CLIENTS))
    assert resumed.history[-1].metrics["dp_epsilon"] == three_rounds
    assert before.history[-1].metrics["dp_epsilon"] < three_rounds
