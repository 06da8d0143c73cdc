"""Cold start: from launch to the end of round 1, and to the process's exit.

For each example (``examples/digits-torch.yaml``, ``examples/digits-sklearn.yaml``) three
commands run alternately, ``--repeats`` times each, in fresh processes:

* ``floor``: ``python -c "import numpy, <framework>"``, the least any script using the
  framework pays (torch, or scikit-learn's linear models);
* ``bare``: ``bench/cold_start_bare.py``, one round of the same federation written by hand
  (it builds a ``torch.optim.SGD``, which imports ``torch._dynamo``, as such a script would);
* ``foedus``: ``foedus run JOB --rounds 1``, the installed command (its progress line goes to
  stderr, which is read with stdout).

The time to round 1 is taken when the process prints its first round's line (foedus's progress
line, the bare script's ``round 1``); the exit time when it has exited; CPU is the child's
user + system time (``os.wait4``), which the machine's other load inflates less than wall
time. Medians are reported, and each command's difference from the floor's (what it adds to
importing the framework: for foedus, its own imports, the job's set-up and the round itself).
Python's bytecode cache is allowed (``PYTHONDONTWRITEBYTECODE`` is removed from the children's
environment) and one warm-up run of each command fills it, as on any installed system.

Run: ``.venv/bin/python bench/cold_start.py [--repeats 5] [--write FILE]`` (without
``--write`` the table is printed only).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FOEDUS = str(Path(PYTHON).with_name("foedus"))
ROUND_LINE = re.compile(r"^round\s+1\b")
EXAMPLES = {"torch": "examples/digits-torch.yaml", "sklearn": "examples/digits-sklearn.yaml"}
FLOOR_IMPORTS = {"torch": "import numpy, torch", "sklearn": "import numpy, sklearn.linear_model"}
GOALS = {"torch": 2.0, "sklearn": 1.0}


@dataclass
class Timing:
    to_round: float
    to_exit: float
    cpu: float


def commands(framework: str) -> dict[str, list[str]]:
    return {
        "floor": [PYTHON, "-c", f"{FLOOR_IMPORTS[framework]}; print('round 1', flush=True)"],
        "bare": [PYTHON, str(ROOT / "bench" / "cold_start_bare.py"), framework],
        "foedus": [FOEDUS, "run", EXAMPLES[framework], "--rounds", "1"],
    }


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("KERAS_BACKEND", "torch")
    return env


def time_once(argv: list[str]) -> Timing:
    """Launch ``argv``; the wall time to its first-round line and to its exit, and its CPU."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    to_round = float("nan")
    for line in child.stdout:
        if to_round != to_round and ROUND_LINE.match(line):
            to_round = time.perf_counter() - start
    _, status, usage = os.wait4(child.pid, 0)
    to_exit = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0 or to_round != to_round:
        raise SystemExit(f"{' '.join(argv)} failed (status {child.returncode})")
    return Timing(to_round, to_exit, usage.ru_utime + usage.ru_stime)


def measure(repeats: int) -> dict[tuple[str, str], list[Timing]]:
    results: dict[tuple[str, str], list[Timing]] = {}
    for framework in EXAMPLES:
        cmds = commands(framework)
        for argv in cmds.values():
            time_once(argv)  # warm-up: the bytecode cache, the page cache
        for _ in range(repeats):
            for name, argv in cmds.items():
                results.setdefault((framework, name), []).append(time_once(argv))
    return results


def table(results: dict[tuple[str, str], list[Timing]], repeats: int, load: float) -> str:
    lines = [
        "# Cold start: launch to the end of round 1",
        "",
        f"`bench/cold_start.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"median of {repeats} runs each, load average {load:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (2 cores).",
        "",
        "| example | command | to round 1 (s) | to exit (s) | CPU (s) | round 1 vs bare "
        "| round 1 over floor (s) | CPU over floor (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for framework in EXAMPLES:
        bare = statistics.median(t.to_round for t in results[framework, "bare"])
        floor = results[framework, "floor"]
        floor_round = statistics.median(t.to_round for t in floor)
        floor_cpu = statistics.median(t.cpu for t in floor)
        for name in ("floor", "bare", "foedus"):
            runs = results[framework, name]
            to_round = statistics.median(t.to_round for t in runs)
            cpu = statistics.median(t.cpu for t in runs)
            lines.append(
                f"| {framework} | {name} | {to_round:.2f} | "
                f"{statistics.median(t.to_exit for t in runs):.2f} | "
                f"{cpu:.2f} | {to_round / bare:.2f}x | {to_round - floor_round:+.2f} | "
                f"{cpu - floor_cpu:+.2f} |")
    lines += ["", "Goals: foedus under " + ", ".join(
        f"{GOALS[f]:.0f} s for {f}" for f in EXAMPLES) + " to round 1."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    text = table(measure(args.repeats), args.repeats, load)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
