"""Runs a benchmark's cases each in a fresh Python process, alternating, and collects the JSON
line each prints last: the measuring loop ``bench/memory.py`` and ``bench/process_backend.py``
share (a fresh process per run, so no case inherits another's imports, caches or peak memory;
alternating, so a change in the machine's load spreads over every case alike).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_fresh(script: str, args: Sequence[str]) -> dict[str, Any]:
    """``python script args...`` with one OpenMP thread; the JSON object on its last line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, script, *args], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def alternate(script: str, cases: dict[str, Sequence[str]],
              repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Each case's runs: ``repeats`` rounds, each running every case once, in order."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, args in cases.items():
            runs[name].append(run_fresh(script, args))
    return runs


def publish(lines: Sequence[str], write: Path | None) -> None:
    """Print the figures' table, and write it where ``--write`` says (never by default)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        write.write_text(text)
