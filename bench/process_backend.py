"""The process backend against the thread backend, with the same number of workers.

Workload: ``bench/memory.py``'s (a 4.77M-parameter torch MLP, 19 MB of float32, 20 IID digits
clients, one local epoch, FedAvg). Each backend runs the job in a fresh process; reported are
the start-up (from the call to the end of the pool's start: spawning and warming the
workers) and the seconds per round after it, median over ``--repeats`` alternating runs.

Run: ``.venv/bin/python bench/process_backend.py [--workers 2] [--rounds 3] [--repeats 2]
[--write FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory  # the workload, defined once


def run(backend: str, workers: int, rounds: int) -> dict[str, Any]:
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins
    from foedus.sim.engine import run_simulation_sync

    load_plugins()
    began = time.perf_counter()
    result = run_simulation_sync(JobSpec.from_dict(memory.job(rounds)), backend=backend,
                                 workers=workers)
    total = time.perf_counter() - began
    startup = float(result.extra["startup_s"])
    return {"startup_s": startup, "per_round_s": (total - startup) / rounds,
            "accuracy": result.final_metrics.get("accuracy")}


def child(backend: str, workers: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", backend, "--workers",
                           str(workers), "--rounds", str(rounds)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--child", choices=["thread", "process"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.workers, args.rounds)))
        return
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {"thread": [], "process": []}
    for _ in range(args.repeats):
        for backend in runs:
            runs[backend].append(child(backend, args.workers, args.rounds))
    thread_round = statistics.median(r["per_round_s"] for r in runs["thread"])
    lines = [
        "# Process backend against thread backend", "",
        f"`bench/process_backend.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"4.77M-parameter MLP, 20 clients, {args.workers} workers, {args.rounds} rounds, "
        f"median of {args.repeats}; load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (2 cores).", "",
        "| backend | start-up (s) | s/round | vs thread | accuracy |", "|---|---:|---:|---:|---:|",
    ]
    for backend, rs in runs.items():
        per_round = statistics.median(r["per_round_s"] for r in rs)
        lines.append(f"| {backend} | {statistics.median(r['startup_s'] for r in rs):.2f} | "
                     f"{per_round:.2f} | {per_round / thread_round:.2f}x | "
                     f"{rs[0]['accuracy']:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
