"""Privacy/utility table: final accuracy and epsilon of DP runs of the digits job.

Run: ``.venv/bin/python bench/dp_utility.py`` (about a minute). Every run is the same job
(sklearn SGD on scikit-learn's digits, IID split, all clients every round), only the pipeline
changes; epsilon is at delta = 1e-5 from the RDP accountant of dp-accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import foedus.privacy.dp  # noqa: F401  (registers the stages)
from foedus.config.spec import JobSpec
from foedus.privacy.accountant import SamplingSpec, epsilon_after
from foedus.runner import run_job


def job(clients: int, rounds: int, pipeline: list[dict[str, Any]], seed: int) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": "dp-bench", "seed": seed, "rounds": rounds, "round_timeout": 30,
        "data": {"dataset": "digits", "partition": "iid"}, "clients": {"count": clients},
        "pipeline": pipeline,
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    n, rounds = args.clients, args.rounds
    settings: list[tuple[str, float | None, list[dict[str, Any]]]] = [("none", None, [])]
    for z in (0.5, 1.0, 2.0):
        settings.append(("central-dp", z, [{"type": "central-dp", "params": {
            "clients_per_round": n, "clip_norm": 1.0, "noise_multiplier": z}}]))
    for z in (0.1, 0.3, 1.0):
        settings.append(("local-dp", z, [{"type": "local-dp", "params": {
            "clip_norm": 1.0, "noise_multiplier": z}}]))
    print(f"| mechanism | noise multiplier | epsilon (delta=1e-5, {rounds} rounds) "
          f"| accuracy (mean of {args.seeds} seeds) | seconds/run |")
    print("|---|---|---|---|---|")
    for name, z, pipeline in settings:
        accs, secs = [], []
        for seed in range(args.seeds):
            began = time.perf_counter()
            result = asyncio.run(run_job(job(n, rounds, pipeline, seed)))
            secs.append(time.perf_counter() - began)
            accs.append(result.final_metrics["accuracy"])
        eps = "inf (no DP)" if z is None else "{:.1f}".format(epsilon_after(
            rounds, noise_multiplier=z, delta=1e-5, sampling=SamplingSpec(1, 1)))
        acc = sum(accs) / len(accs)
        print(f"| {name} | {z if z is not None else '-'} | {eps} | {acc:.3f} "
              f"(min {min(accs):.3f}) | {sum(secs) / len(secs):.2f} |")


if __name__ == "__main__":
    main()
