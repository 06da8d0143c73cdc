"""Centralized vs federated training of every model adapter, through the real job runner.

"Centralized" is the same job file with one client holding the union of the clients' data, and
the same rounds and local epochs, so both see the same total number of epochs. "Federated" is
10 clients with an IID split and FedAvg (tree ensembles: 10 clients x k trees merged by
``tree-bagging`` in one round, against one client growing 10 x k trees). The score is test
accuracy for classifiers and R^2 for regressors, in points (x100).

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

# imported for their side effect: registering tree-bagging and the model adapters
import foedus.aggregate.trees
import foedus.models.keras
import foedus.models.sklearn
import foedus.models.trees  # noqa: F401
from foedus.config.runner import run_job
from foedus.config.spec import JobSpec

CLIENTS = 10
TREES = 10  # per client; the central forest grows CLIENTS * TREES
# (label, model, params, dataset, rounds, epochs)
CASES: list[tuple[str, str, dict[str, Any], str, int, int]] = [
    ("sklearn SGDClassifier", "sklearn-sgd", {}, "digits", 10, 1),
    ("sklearn LogisticRegression", "sklearn-logistic", {}, "digits", 10, 1),
    ("sklearn MLPClassifier", "sklearn-mlp", {}, "digits", 10, 2),
    ("sklearn SGDRegressor", "sklearn-sgd-regressor", {}, "diabetes", 10, 1),
    ("sklearn Ridge", "sklearn-ridge", {}, "diabetes", 1, 1),
    ("sklearn MLPRegressor", "sklearn-mlp", {}, "diabetes", 10, 2),
    ("torch MLP", "torch-mlp", {}, "digits", 10, 1),
    ("torch MLP + BatchNorm", "torch-mlp", {"batch_norm": True}, "digits", 10, 1),
    ("torch MLP + FedProx 0.01", "torch-mlp", {"mu": 0.01}, "digits", 10, 1),
    ("keras MLP", "keras-mlp", {}, "digits", 10, 1),
    ("keras MLP + BatchNorm", "keras-mlp", {"batch_norm": True}, "digits", 10, 1),
]
TREE_CASES = [
    ("random forest", "sklearn-random-forest", "digits"),
    ("extra trees", "sklearn-extra-trees", "digits"),
    ("random forest regressor", "sklearn-random-forest", "diabetes"),
]


def job(model: str, params: dict[str, Any], dataset: str, rounds: int, epochs: int,
        clients: int, aggregator: str = "fedavg") -> JobSpec:
    return JobSpec.from_dict({
        "job_id": f"bench-{model}-{clients}", "rounds": rounds,
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
            "time fed. (s) |", "|---|---|---|---|---|---|---|"]
    for label, model, params, dataset, rounds, epochs in CASES:
        central, _ = score(job(model, params, dataset, rounds, epochs, 1))
        fed, seconds = score(job(model, params, dataset, rounds, epochs, CLIENTS))
        rows.append(f"| {label} | {dataset} | {rounds} x {epochs} | {central:.1f} | {fed:.1f} | "
                    f"{fed - central:+.1f} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    for label, model, dataset in TREE_CASES:
        params = {"validation_fraction": 0.0}
        central, _ = score(job(model, {**params, "n_estimators": CLIENTS * TREES}, dataset, 1,
                               1, 1, "tree-bagging"))
        fed, seconds = score(job(model, {**params, "n_estimators": TREES}, dataset, 1, 1,
                                 CLIENTS, "tree-bagging"))
        rows.append(f"| {label} ({CLIENTS * TREES} trees) | {dataset} | bagging, 1 round | "
                    f"{central:.1f} | {fed:.1f} | {fed - central:+.1f} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.write:
        args.write.write_text(
            "# Model adapters: centralized vs federated\n\n"
            "Produced by `bench/models.py` (scores: test accuracy, or R^2 for diabetes, x100; "
            "seed 0; 2-core machine, torch threads = 1).\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
