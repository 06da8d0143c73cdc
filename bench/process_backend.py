"""The process backend against the thread backend, with the same number of workers.

Workload: ``bench/memory.py``'s (a 4.77M-parameter torch MLP, 19 MB of float32, 20 IID digits
clients, one local epoch, FedAvg). Each backend runs the job in a fresh process; reported are
the start-up (from the call to the end of the pool's start: the job's data, server and
evaluator, which import torch in this process, then starting and warming the workers), the
seconds per round (the server's round times: training, aggregation, evaluation) and the end
(stopping the graph and the pool), medians over ``--repeats`` alternating runs. The process backend
runs twice: with its default start (a forkserver that imports torch once and forks the
workers) and with ``start_method="spawn"`` (each worker a fresh interpreter importing torch).
The thread backend's start-up is this process's own share, which every backend pays.

Run: ``.venv/bin/python bench/process_backend.py [--workers 2] [--rounds 3] [--repeats 2]
[--write FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fresh  # the fresh-process measuring loop, shared with bench/memory.py
import memory  # the workload, defined once

#: the rows: backend name and its options
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "thread": ("thread", {}),
    "process": ("process", {}),
    "process, spawn": ("process", {"start_method": "spawn"}),
}


def run(row: str, workers: int, rounds: int) -> dict[str, Any]:
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins
    from foedus.sim.engine import run_simulation_sync

    load_plugins()
    backend, options = BACKENDS[row]
    began = time.perf_counter()
    result = run_simulation_sync(JobSpec.from_dict(memory.job(rounds)), backend=backend,
                                 workers=workers, **options)
    total = time.perf_counter() - began
    startup = float(result.extra["startup_s"])
    in_rounds = sum(record.duration_s for record in result.history)
    # per round: the server's own round times (a round's training, aggregation and
    # evaluation); what is left after start-up and the rounds is the end: stopping the
    # graph and the pool (worker processes exiting)
    return {"startup_s": startup, "per_round_s": in_rounds / rounds,
            "end_s": total - startup - in_rounds,
            "accuracy": result.final_metrics.get("accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--child", choices=list(BACKENDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.workers, args.rounds)))
        return
    load = os.getloadavg()[0]
    runs = fresh.alternate(__file__, {
        row: ["--child", row, "--workers", str(args.workers), "--rounds", str(args.rounds)]
        for row in BACKENDS}, args.repeats)
    thread_round = statistics.median(r["per_round_s"] for r in runs["thread"])
    thread_startup = statistics.median(r["startup_s"] for r in runs["thread"])
    lines = [
        "# Process backend against thread backend", "",
        f"`bench/process_backend.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"4.77M-parameter MLP, 20 clients, {args.workers} workers, {args.rounds} rounds, "
        f"median of {args.repeats}; load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (2 cores).", "",
        "| backend | start-up (s) | start-up beyond thread's (s) | s/round | vs thread "
        "| end (s) | accuracy |", "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row, rs in runs.items():
        per_round = statistics.median(r["per_round_s"] for r in rs)
        startup = statistics.median(r["startup_s"] for r in rs)
        lines.append(f"| {row} | {startup:.2f} | {startup - thread_startup:.2f} | "
                     f"{per_round:.2f} | {per_round / thread_round:.2f}x | "
                     f"{statistics.median(r['end_s'] for r in rs):.2f} | "
                     f"{rs[0]['accuracy']:.4f} |")
    fresh.publish(lines, args.write)


if __name__ == "__main__":
    main()
