"""Whole federated jobs (digits, in-process) with each aggregator family, clean and attacked.

The attack: 2 of the clients are Byzantine (the ``byzantine`` stage of foedus.sim.attacks
replaces their updates after local training): one sends its model sign-flipped and scaled up
ten times, the other sends Gaussian noise of standard deviation 10.

Identical jobs are not bit-for-bit reproducible (the final accuracy of one job varies by about
a point between runs on this machine), so the margins below leave room for that.
"""

from __future__ import annotations

from typing import Any

import pytest

import foedus.aggregate
import foedus.sim.attacks  # noqa: F401 - registers the byzantine stage
from foedus.config.spec import JobSpec
from foedus.runner import JobResult, run_job_sync

ATTACKERS = ["client-000", "client-001"]


def job(aggregator: str, params: dict[str, Any] | None = None, *, clients: int = 10,
        attacked: bool = False, rounds: int = 10, epochs: int = 3) -> JobResult:
    spec = JobSpec.from_dict({
        "job_id": f"{aggregator}-{'attacked' if attacked else 'clean'}", "seed": 0,
        "rounds": rounds, "round_timeout": 30,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": clients, "epochs": epochs},
        "model": "sklearn-sgd",
        "aggregator": {"type": aggregator, "params": params or {}},
        "pipeline": [{"type": "byzantine", "params": {"attackers": ATTACKERS}}]
        if attacked else [],
    })
    return run_job_sync(spec)


def accuracy(result: JobResult) -> float:
    return float(result.final_metrics["accuracy"])


@pytest.fixture(scope="module")
def clean_fedavg() -> dict[int, float]:
    """Clean FedAvg accuracy, the yardstick, for 10 and (Bulyan's) 11 clients."""
    return {n: accuracy(job("fedavg", clients=n)) for n in (10, 11)}


@pytest.mark.parametrize(("name", "params"), [
    ("fedavgm", {"server_lr": 1.0, "momentum": 0.5}),
    ("fedadam", {"server_lr": 1.0}),
    ("fedyogi", {"server_lr": 1.0}),
    ("fedadagrad", {"server_lr": 1.0}),
])
def test_a_federated_job_learns_with_each_server_optimiser(
    name: str, params: dict[str, Any]
) -> None:
    result = job(name, params, clients=5, rounds=5, epochs=1)
    assert all(r.status == "ok" and r.accepted == 5 for r in result.history)
    assert accuracy(result) > 0.5  # ten classes: chance is 0.1


def test_fedavgs_compiled_fold_trains_a_job_as_well_as_its_numpy_fold(
    clean_fedavg: dict[int, float],
) -> None:
    # the yardstick job folds with numpy (a small model); this one forces the kernel
    result = job("fedavg", {"kernel": "numba"})
    assert all(r.status == "ok" and r.accepted == 10 for r in result.history)
    assert accuracy(result) == pytest.approx(clean_fedavg[10], abs=0.02)


def test_plain_fedavg_is_wrecked_by_two_byzantine_clients(clean_fedavg: dict[int, float]) -> None:
    assert accuracy(job("fedavg", attacked=True)) < clean_fedavg[10] - 0.3


@pytest.mark.parametrize(("name", "params", "clients"), [
    ("multi-krum", {"f": 2}, 10),
    ("median", {}, 10),
    ("trimmed-mean", {"beta": 0.2}, 10),
    ("geomedian", {}, 10),
    ("bulyan", {"f": 2}, 11),  # Bulyan needs n >= 4f + 3 = 11 to tolerate 2 attackers
])
def test_robust_aggregators_under_attack_stay_close_to_clean_fedavg(
    name: str, params: dict[str, Any], clients: int, clean_fedavg: dict[int, float]
) -> None:
    result = job(name, params, clients=clients, attacked=True)
    assert all(r.accepted == clients for r in result.history)
    # bench/attack.py, seeds 0-7: every rule here within 1.7 points of clean FedAvg
    assert accuracy(result) >= clean_fedavg[clients] - 0.03


def test_krum_under_attack_keeps_learning_though_one_client_per_round_costs_accuracy(
    clean_fedavg: dict[int, float],
) -> None:
    # Krum keeps a single client's model each round, so it trails FedAvg even without an
    # attack (Blanchard et al. note this); it must still be far from the wrecked FedAvg
    assert accuracy(job("krum", {"f": 2}, attacked=True)) >= clean_fedavg[10] - 0.10
