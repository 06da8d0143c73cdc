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
The central forest keeps scikit-learn's defaults (``CENTRAL_DEFAULTS``); the federated forests use
the adapter's defaults, chosen from the ``--tree-variants`` table. XGBoost rows (if ``xgboost``
is installed): 10 boosters of ``BOOST_ROUNDS`` rounds, one per client, averaged by
``tree-bagging``, against one booster of ``BOOST_ROUNDS`` rounds on the union of the data.

Federated forest rows (``federated-forest`` + ``forest-histograms``): one forest of 100 trees grown
by the 10 clients together on summed histograms, over ``HF_ROUNDS`` rounds, against the same
central forest (scikit-learn's RandomForestClassifier, or RandomForestRegressor on diabetes, 100
trees), mean over ``HF_SEEDS`` seeds.
The rounds it needed and the bytes per client per round (down: the broadcast; up: the update,
raw and coded by the ``zstd`` stage) are measured by replaying the protocol in-process (adapter
and aggregator, no transport): array payload bytes, not wire bytes.

Run: ``.venv/bin/python bench/models.py [--trees-only | --tree-variants | --histforest-only]
[--write docs/benchmarks-models.md]`` (``--trees-only`` re-runs the tree, booster and federated
forest rows and keeps the other rows of the file; ``--histforest-only`` only the federated forest
rows; ``--tree-variants`` writes its own section of the file).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras

import argparse
import asyncio
import importlib.util
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# imported for their side effect: registering tree-bagging and the model adapters
import foedus.models.keras
import foedus.models.sklearn
import foedus.trees.bagging.aggregator
import foedus.trees.bagging.sklearn_adapter
import foedus.trees.histforest.aggregator
from foedus.config.spec import JobSpec
from foedus.core.message import Kind, Message
from foedus.data.datasets import load_dataset
from foedus.data.partition import partition
from foedus.runner import run_job
from foedus.trees.histforest.adapter import FederatedForestAdapter

CLIENTS = 10
TREES = 10  # per client; the central forest grows CLIENTS * TREES
SEEDS = 10  # tree rows: mean over this many seeds (split, partition and trees all change)
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
# tree rows: (label, model, dataset, federated params); the central forest is the same adapter
# with one client, CLIENTS * TREES trees and scikit-learn's own defaults (CENTRAL_DEFAULTS undoes
# the adapter's federated defaults), so it is exactly ``RandomForestClassifier(n_estimators=100)``
TREE_CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("random forest", "sklearn-random-forest", "digits", {}),
    ("extra trees", "sklearn-extra-trees", "digits", {}),
    ("random forest", "sklearn-random-forest", "breast_cancer", {}),
    ("extra trees", "sklearn-extra-trees", "breast_cancer", {}),
    ("random forest regressor", "sklearn-random-forest", "diabetes", {}),
]
CENTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sklearn-random-forest": {"bootstrap": True}, "sklearn-extra-trees": {},
}
# the settings measured for the adapter's defaults (``--tree-variants``), digits only
TREE_VARIANTS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("random forest, bootstrap (scikit-learn default)", "sklearn-random-forest",
     {"bootstrap": True}, {}),
    ("random forest, no bootstrap (adapter default)", "sklearn-random-forest", {}, {}),
    ("random forest, max_samples 0.9", "sklearn-random-forest",
     {"bootstrap": True, "max_samples": 0.9}, {}),
    ("random forest, no bootstrap, weight by samples", "sklearn-random-forest", {},
     {"weight": "samples"}),
    ("random forest, 30/client, hold-out 0.2, best 100 by score", "sklearn-random-forest",
     {"n_estimators": 30, "validation_fraction": 0.2}, {"max_trees": 100, "select": "score"}),
    ("random forest, hold-out 0.2, weight by score", "sklearn-random-forest",
     {"validation_fraction": 0.2}, {"weight": "score"}),
    ("extra trees (adapter default = scikit-learn's)", "sklearn-extra-trees", {}, {}),
    ("extra trees, 30/client, hold-out 0.2, best 100 by score", "sklearn-extra-trees",
     {"n_estimators": 30, "validation_fraction": 0.2}, {"max_trees": 100, "select": "score"}),
]
# XGBoost booster bagging: each client boosts BOOST_ROUNDS rounds, the server averages the
# boosters; centrally, one booster of BOOST_ROUNDS rounds on the union of the data
BOOST_ROUNDS = 20
BOOSTER_CASES = ["breast_cancer", "wine", "digits"]
# federated forest (one forest grown on summed histograms): datasets, seeds, rounds per job
HF_CASES = ["digits", "breast_cancer", "diabetes"]
HF_SEEDS = 5
HF_ROUNDS = 30  # enough for the deepest tree seen (digits: complete after <= 20 rounds)
HF_MARK = "summed histograms"


def job(model: str, params: dict[str, Any], dataset: str, rounds: int, epochs: int,
        clients: int, aggregator: Any = "fedavg", seed: int = 0) -> JobSpec:
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
    parser.add_argument("--trees-only", action="store_true",
                        help="only the tree and booster rows; with --write, replace only those "
                             "rows of an existing table")
    parser.add_argument("--histforest-only", action="store_true",
                        help="only the federated forest rows; with --write, replace only those")
    parser.add_argument("--tree-variants", action="store_true",
                        help="print the federated tree settings compared for the defaults")
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

    def seeds(model: str, dataset: str, central_params: dict[str, Any],
              fed_params: dict[str, Any], aggregator: Any) -> tuple[float, float, float,
                                                                  np.ndarray]:
        results = []
        for seed in range(SEEDS):
            central, _ = score(job(model, central_params, dataset, 1, 1, 1, "tree-bagging",
                                   seed))
            fed, seconds = score(job(model, fed_params, dataset, 1, 1, CLIENTS, aggregator,
                                     seed))
            results.append((central, fed, seconds))
        c, f, t = (float(v) for v in np.mean(results, axis=0))
        return c, f, t, np.array([r[1] - r[0] for r in results])

    def spread(values: np.ndarray) -> str:
        return f"{values.mean():+.1f} ± {values.std():.1f}"

    def histforest(dataset: str) -> None:
        results = []
        for seed in range(HF_SEEDS):
            central, _ = score(job("sklearn-random-forest", {
                "n_estimators": CLIENTS * TREES, **CENTRAL_DEFAULTS["sklearn-random-forest"]},
                dataset, 1, 1, 1, "tree-bagging", seed))
            fed, seconds = score(job("federated-forest", {"n_estimators": CLIENTS * TREES},
                                     dataset, HF_ROUNDS, 1, CLIENTS, "forest-histograms", seed))
            results.append((central, fed, seconds))
        c, f, t = (float(v) for v in np.mean(results, axis=0))
        gaps = np.array([r[1] - r[0] for r in results])
        traffic = histforest_traffic(dataset, CLIENTS * TREES)
        row(f"federated forest ({CLIENTS * TREES} trees, {HF_SEEDS} seeds)", dataset,
            f"{HF_MARK}, {HF_ROUNDS} rounds (complete after {traffic.rounds}); "
            f"{traffic.describe()}", c, f, spread(gaps), t)

    if args.histforest_only:
        for dataset in HF_CASES:
            histforest(dataset)
    if not (args.trees_only or args.tree_variants or args.histforest_only):
        for label, model, params, dataset, rounds, epochs in CASES:
            central, _ = score(job(model, params, dataset, rounds, epochs, 1))
            fed, seconds = score(job(model, params, dataset, rounds, epochs, CLIENTS))
            row(label, dataset, f"{rounds} x {epochs}", central, fed, f"{fed - central:+.1f}",
                seconds)
    if args.tree_variants:
        for label, model, fed_params, agg_params in TREE_VARIANTS:
            central_params = {"n_estimators": CLIENTS * TREES, **CENTRAL_DEFAULTS[model]}
            c, f, t, gaps = seeds(model, "digits", central_params,
                                  {"n_estimators": TREES, **fed_params},
                                  {"type": "tree-bagging", "params": agg_params})
            row(f"{label} ({SEEDS} seeds)", "digits", "bagging, 1 round", c, f, spread(gaps), t)
    elif not args.histforest_only:
        for label, model, dataset, fed_params in TREE_CASES:
            central_params = {"n_estimators": CLIENTS * TREES, **CENTRAL_DEFAULTS[model]}
            c, f, t, gaps = seeds(model, dataset, central_params,
                                  {"n_estimators": TREES, **fed_params}, "tree-bagging")
            row(f"{label} ({CLIENTS * TREES} trees, {SEEDS} seeds)", dataset,
                "bagging, 1 round", c, f, spread(gaps), t)
        if importlib.util.find_spec("xgboost") is not None:
            import foedus.trees.bagging.xgboost_adapter  # noqa: F401  (registers xgboost-bagging)

            for dataset in BOOSTER_CASES:
                # central: XGBoost's own defaults; federated: the adapter's defaults
                xgb_defaults = {"min_child_weight": 1.0, "colsample_bynode": 1.0}
                central_params = {"num_boost_round": BOOST_ROUNDS, "params": xgb_defaults}
                c, f, t, gaps = seeds("xgboost-bagging", dataset, central_params,
                                      {"num_boost_round": BOOST_ROUNDS}, "tree-bagging")
                row(f"xgboost-bagging ({CLIENTS} boosters vs 1, {SEEDS} seeds)", dataset,
                    f"{BOOST_ROUNDS} boosting rounds", c, f, spread(gaps), t)
        for dataset in HF_CASES:
            histforest(dataset)
    print("\n".join(rows))
    if args.write:
        write(args.write, rows[2:], variants=args.tree_variants, trees_only=args.trees_only,
              histforest_only=args.histforest_only)


def histforest_traffic(dataset: str, trees: int, seed: int = 0) -> Traffic:
    """Replay the federated forest's rounds in-process (seed 0): the round after which no node
    is open, and one client's bytes (array payload) per round at their peak and over the rounds
    up to completion: the broadcast it receives, its update, and its update coded by the
    ``zstd`` pipeline stage (level 3)."""
    from foedus.compress.lossless import ZstdEncoder

    train, _, spec = load_dataset(dataset, seed=seed)
    shares = partition(train, CLIENTS, scheme="iid", seed=seed)
    server = FederatedForestAdapter(spec, seed=seed, n_estimators=trees)
    aggregator = foedus.trees.histforest.aggregator.ForestHistograms()
    zstd = ZstdEncoder(level=3)
    params = server.get_params()
    down: list[int] = []
    up: list[int] = []
    coded: list[int] = []
    for rnd in range(1, HF_ROUNDS + 1):
        aggregator.reset(params)
        down.append(sum(a.nbytes for a in params.values()))
        for i, share in enumerate(shares):
            client = FederatedForestAdapter(spec, seed=seed, n_estimators=trees)
            client.set_params(params)
            client.fit(share)
            update = Message.create(Kind.UPDATE, job_id="traffic", round=rnd, sender=f"c{i}",
                                    params=client.get_params(), num_examples=len(share))
            if i == 0:
                up.append(sum(a.nbytes for a in update.params.values()))
                coded.append(sum(a.nbytes for a in zstd(update).params.values()))
            aggregator.accept(update)
        params = aggregator.result()
        if rnd > 1 and not len(params["frontier"]):
            break
    return Traffic(len(up), max(down), sum(down), max(up), sum(up), max(coded), sum(coded))


@dataclass(frozen=True)
class Traffic:
    """One client's bytes per round in a federated forest job (see histforest_traffic)."""

    rounds: int
    down_peak: int
    down_total: int
    up_peak: int
    up_total: int
    zstd_peak: int
    zstd_total: int

    def describe(self) -> str:
        mb = 1e6
        return (f"per client: down peak {self.down_peak / mb:.1f} MB/round, "
                f"{self.down_total / mb:.1f} MB/job; up peak {self.up_peak / mb:.1f} MB/round, "
                f"{self.up_total / mb:.1f} MB/job; up with zstd {self.zstd_peak / mb:.2f} and "
                f"{self.zstd_total / mb:.1f} MB")


HEADER = (
    "# Model adapters: centralized vs federated\n\n"
    "Produced by `bench/models.py` (scores: test accuracy, or R^2 for diabetes, x100; "
    "seed 0 unless stated; tree and booster rows: mean over seeds, gap as mean ± std of the "
    "per-seed gaps; 2-core machine, torch threads = 1). Budgets and the reasons for them: see "
    "the docstring of `bench/models.py` and `docs/models.md`, which also explains the rows "
    "marked **no** (federated more than 2 points below centralized).\n\n"
    "| model | dataset | rounds x epochs | centralized | federated (10 IID) | gap | "
    "within 2 | time fed. (s) |\n|---|---|---|---|---|---|---|---|\n"
)
VARIANTS = (
    "\n## Tree bagging settings (digits, `--tree-variants`)\n\n"
    "Central: scikit-learn's defaults, 100 trees, one client. Federated: 10 IID clients x 10 "
    "trees (unless stated), merged by `tree-bagging` with the options named.\n\n"
    "| federated setting | dataset | rounds | centralized | federated (10 IID) | gap | "
    "within 2 | time fed. (s) |\n|---|---|---|---|---|---|---|---|\n"
)


def _is_tree_row(line: str) -> bool:
    return "bagging, 1 round" in line or "boosting rounds" in line or HF_MARK in line


def write(path: Path, new: list[str], *, variants: bool, trees_only: bool,
          histforest_only: bool = False) -> None:
    """Write the main table and the variants section, keeping whichever part was not re-run."""
    old = path.read_text() if path.exists() else ""
    main_part, _, variant_part = old.partition(VARIANTS.split("\n\n")[0].strip("\n"))
    old_main = [ln for ln in main_part.splitlines() if ln.startswith("| ") and "---" not in ln
                and not ln.startswith("| model |")]
    old_variants = [ln for ln in variant_part.splitlines() if ln.startswith("| ")
                    and "---" not in ln and not ln.startswith("| federated setting")]
    if variants:
        main_rows, variant_rows = old_main, new
    elif trees_only or histforest_only:
        mine = (lambda ln: HF_MARK in ln) if histforest_only else _is_tree_row
        main_rows = [ln for ln in old_main if not mine(ln)] + new
        variant_rows = old_variants
    else:
        main_rows, variant_rows = new, old_variants
    text = HEADER + "\n".join(main_rows) + "\n"
    if variant_rows:
        text += VARIANTS + "\n".join(variant_rows) + "\n"
    path.write_text(text)

if __name__ == "__main__":
    main()
