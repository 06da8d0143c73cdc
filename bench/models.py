"""Centralized vs federated training of every model adapter, through the real job runner.

"Centralized" is the same job file with one client holding the union of the clients' data, and
the same rounds and local epochs, so both see the same total number of epochs. "Federated" is
10 clients with an IID split and FedAvg (tree ensembles: 10 clients x k trees merged by
``tree-bagging`` in one round, against one client growing 10 x k trees). The score is test
accuracy for classifiers and R^2 for regressors, in points (x100).

Epoch budgets: FedAvg with one local epoch makes about a tenth of the sequential optimiser steps
of centralised training over the same epochs (each client takes ~5 mini-batch steps a round and
the average of ten such walks is roughly one walk), so the digits classifiers with hidden layers
are compared at 50 epochs, where *both* have converged (at 10 epochs the federated torch MLP was
at 67 against 97; at 30, 94.4 against 97.8). The linear models converge in 10 rounds. The
diabetes MLP regressor stays at 10 x 2: centralised it overfits the 353 training rows with more
epochs (R^2 falls to ~1 at 50), which would flatter the federated side. Tree forests are cheap, so
their rows are the mean over ``SEEDS`` seeds (each seed changes the split and partition too).

Run: ``.venv/bin/python bench/models.py [--write docs/benchmarks-models.md]``
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import argparse
import asyncio
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# imported for their side effect: registering tree-bagging and the model adapters
import foedus.aggregate.trees
import foedus.models.keras
import foedus.models.sklearn
import foedus.models.trees  # noqa: F401
from foedus.config.runner import run_job
from foedus.config.spec import JobSpec

CLIENTS = 10
TREES = 10  # per client; the central forest grows CLIENTS * TREES
SEEDS = 5  # tree rows: mean over this many seeds (split, partition and trees all change)
MAX_GAP = 2.0  # the criterion: federated within 2 points of centralized
# (label, model, params, dataset, rounds, epochs)
CASES: list[tuple[str, str, dict[str, Any], str, int, int]] = [
    ("sklearn SGDClassifier", "sklearn-sgd", {}, "digits", 10, 1),
    ("sklearn LogisticRegression", "sklearn-logistic", {}, "digits", 10, 1),
    ("sklearn MLPClassifier", "sklearn-mlp", {}, "digits", 25, 2),
    ("sklearn SGDRegressor", "sklearn-sgd-regressor", {}, "diabetes", 10, 1),
    ("sklearn Ridge", "sklearn-ridge", {}, "diabetes", 1, 1),
    ("sklearn MLPRegressor", "sklearn-mlp", {}, "diabetes", 10, 2),
    ("torch MLP", "torch-mlp", {}, "digits", 50, 1),
    ("torch MLP + BatchNorm", "torch-mlp", {"batch_norm": True}, "digits", 50, 1),
    ("torch MLP + FedProx 0.01", "torch-mlp", {"mu": 0.01}, "digits", 50, 1),
    ("keras MLP", "keras-mlp", {}, "digits", 50, 1),
    ("keras MLP + BatchNorm", "keras-mlp", {"batch_norm": True}, "digits", 50, 1),
]
TREE_CASES = [
    ("random forest", "sklearn-random-forest", "digits"),
    ("extra trees", "sklearn-extra-trees", "digits"),
    ("random forest regressor", "sklearn-random-forest", "diabetes"),
]


def job(model: str, params: dict[str, Any], dataset: str, rounds: int, epochs: int,
        clients: int, aggregator: str = "fedavg", seed: int = 0) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": f"bench-{model}-{clients}", "rounds": rounds, "seed": seed,
        "data": {"dataset": dataset, "partition": "iid"},
        "clients": {"count": clients, "epochs": epochs},
        "model": {"type": model, "params": params}, "aggregator": aggregator,
    })


def score(spec: JobSpec) -> tuple[float, float]:
    began = time.perf_counter()
    metrics = asyncio.run(run_job(spec)).final_metrics
    value = metrics.get("accuracy", metrics.get("r2", float("nan")))
    return 100 * value, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # simulated clients share 2 cores; see docs/models.md
    warnings.simplefilter("ignore")
    rows = ["| model | dataset | rounds x epochs | centralized | federated (10 IID) | gap | "
            "within 2 | time fed. (s) |", "|---|---|---|---|---|---|---|---|"]

    def row(label: str, dataset: str, budget: str, central: float, fed: float, gap: str,
            seconds: float) -> None:
        ok = "yes" if fed - central >= -MAX_GAP else "**no**"
        rows.append(f"| {label} | {dataset} | {budget} | {central:.1f} | {fed:.1f} | {gap} | "
                    f"{ok} | {seconds:.1f} |")
        print(rows[-1], flush=True)

    for label, model, params, dataset, rounds, epochs in CASES:
        central, _ = score(job(model, params, dataset, rounds, epochs, 1))
        fed, seconds = score(job(model, params, dataset, rounds, epochs, CLIENTS))
        row(label, dataset, f"{rounds} x {epochs}", central, fed, f"{fed - central:+.1f}",
            seconds)
    for label, model, dataset in TREE_CASES:
        params = {"validation_fraction": 0.0}
        results = []
        for seed in range(SEEDS):
            central, _ = score(job(model, {**params, "n_estimators": CLIENTS * TREES}, dataset,
                                   1, 1, 1, "tree-bagging", seed))
            fed, seconds = score(job(model, {**params, "n_estimators": TREES}, dataset, 1, 1,
                                     CLIENTS, "tree-bagging", seed))
            results.append((central, fed, seconds))
        c, f, t = (float(v) for v in np.mean(results, axis=0))
        gaps = np.array([r[1] - r[0] for r in results])
        row(f"{label} ({CLIENTS * TREES} trees, {SEEDS} seeds)", dataset, "bagging, 1 round",
            c, f, f"{gaps.mean():+.1f} (min {gaps.min():+.1f}, max {gaps.max():+.1f})", t)
    table = "\n".join(rows)
    print(table)
    if args.write:
        args.write.write_text(
            "# Model adapters: centralized vs federated\n\n"
            "Produced by `bench/models.py` (scores: test accuracy, or R^2 for diabetes, x100; "
            "seed 0 unless stated; 2-core machine, torch threads = 1). Budgets and the reasons "
            "for them: see the docstring of `bench/models.py` and `docs/models.md`, which also "
            "explains the rows marked **no** (federated more than 2 points below centralized)."
            "\n\n"
            + table + "\n"
        )


if __name__ == "__main__":
    main()
