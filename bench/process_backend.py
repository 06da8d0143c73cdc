"""The process backend against the thread backend, with the same number of workers.

Workload: ``bench/memory.py``'s (a 4.77M-parameter torch MLP, 19 MB of float32, 20 IID digits
clients, one local epoch, FedAvg). Each backend runs the job in a fresh process; reported are
the start-up (from the call to the end of the pool's start: the job's data, server and
evaluator, which import torch in this process, then starting and warming the workers), the
seconds per round (the server's round times: training, aggregation, evaluation) and the end
(stopping the graph and the pool), medians over ``--repeats`` alternating runs. On a shared
machine wall times swing with the other jobs' load, so each row also has the CPU seconds per
round of the job's whole process tree (this process, the forkserver, the workers), from the
end of round 1 to the end of the last: what the backend costs, whatever share of the cores it
got. The process backend
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


def tree_cpu_s() -> float | None:
    """CPU seconds (user and system) used so far by this process and every live descendant
    (the forkserver, the workers): from ``/proc``, so Linux only (elsewhere ``None``)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except FileNotFoundError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parent[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    ours = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, ppid in parent.items() if ppid in ours} - ours
        grew = bool(found)
        ours |= found
    return sum(used.get(pid, 0.0) for pid in ours)


def run(row: str, workers: int, rounds: int) -> dict[str, Any]:
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins
    from foedus.sim.engine import run_simulation_sync

    load_plugins()
    backend, options = BACKENDS[row]
    cpu_at_round_end: list[float | None] = []
    began = time.perf_counter()
    result = run_simulation_sync(JobSpec.from_dict(memory.job(rounds)), backend=backend,
                                 workers=workers, on_round=lambda _: cpu_at_round_end.append(
                                     tree_cpu_s()), **options)
    total = time.perf_counter() - began
    startup = float(result.extra["startup_s"])
    in_rounds = sum(record.duration_s for record in result.history)
    # per round: the server's own round times (a round's training, aggregation and
    # evaluation); what is left after start-up and the rounds is the end: stopping the
    # graph and the pool (worker processes exiting)
    first, last = cpu_at_round_end[0], cpu_at_round_end[-1]
    cpu = (last - first) / (rounds - 1) if first is not None and last is not None else None
    return {"startup_s": startup, "per_round_s": in_rounds / rounds,
            "end_s": total - startup - in_rounds, "cpu_per_round_s": cpu,
            "accuracy": result.final_metrics.get("accuracy")}


def _median_cpu(rs: list[dict[str, Any]]) -> float | None:
    values = [r["cpu_per_round_s"] for r in rs if r.get("cpu_per_round_s") is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="at least 2")
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
        "| CPU s/round | vs thread | end (s) | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    thread_cpu = _median_cpu(runs["thread"])
    for row, rs in runs.items():
        per_round = statistics.median(r["per_round_s"] for r in rs)
        startup = statistics.median(r["startup_s"] for r in rs)
        cpu = _median_cpu(rs)
        cpu_cells = (f"{cpu:.2f} | {cpu / thread_cpu:.2f}x" if cpu is not None and thread_cpu
                     else "n/a | n/a")
        lines.append(f"| {row} | {startup:.2f} | {startup - thread_startup:.2f} | "
                     f"{per_round:.2f} | {per_round / thread_round:.2f}x | {cpu_cells} | "
                     f"{statistics.median(r['end_s'] for r in rs):.2f} | "
                     f"{rs[0]['accuracy']:.4f} |")
    fresh.publish(lines, args.write)


if __name__ == "__main__":
    main()
