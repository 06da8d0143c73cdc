"""Measuring a benchmark run from outside: the process tree's memory, its timings, the table.

Kept apart from ``run.py`` so a test can check the sampler and the table writer on a trivial
subprocess, without foedus's engine, torch or Flower.

Peak memory is the largest *sum of RSS over the whole process tree* seen by a sampler that wakes
every 50 ms. Ray (under Flower) starts a dozen processes (GCS, raylet, workers), so the launched
process's own RSS would understate it badly. A process stays counted once seen, even if it is
reparented (daemons that double-fork leave the tree). RSS counts shared pages (e.g. torch's
libraries mapped by every Ray worker) once per process: that over-states physical memory a
little but is what ``ps``/``top`` show and what runs a machine out of memory under cgroups
accounting of file-backed pages; PSS would be fairer but costs a full ``smaps`` walk per sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

RESULT_PREFIX = "RESULT "


class TreeSampler:
    """Samples the summed RSS of ``pid`` and all its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._known: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        """One sample: the tree's summed RSS in bytes (also folded into the peak)."""
        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"] or 0, []).append(proc.pid)
        todo = [self.pid, *self._known]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(children.get(pid, ()))
        total = alive = 0
        for pid in seen:
            proc = self._known.get(pid)
            try:
                if proc is None:
                    proc = self._known[pid] = psutil.Process(pid)
                total += proc.memory_info().rss
                alive += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._known.pop(pid, None)
        self.samples += 1
        self.peak_bytes = max(self.peak_bytes, total)
        self.peak_processes = max(self.peak_processes, alive)
        return total

    def kill_leftovers(self) -> None:
        """Kill processes of the tree still alive (psutil checks the pid was not reused)."""
        leftovers = [p for p in self._known.values() if p.is_running()]
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


@dataclass
class Run:
    """One launched command, measured."""

    returncode: int
    t_launch: float  # time.time() just before the process was started
    wall_s: float
    peak_rss_bytes: int
    peak_processes: int
    stdout: str
    stderr: str
    result: dict[str, Any] = field(default_factory=dict)


def launch(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
    interval: float = 0.05,
) -> Run:
    """Run ``cmd`` to completion while sampling its process tree's memory; parse its
    ``RESULT {json}`` line. On timeout the whole tree is killed."""
    full_env = {**os.environ, **(env or {})}
    t_launch = time.time()
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, start_new_session=True)
    with TreeSampler(proc.pid, interval) as sampler:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            out, err = proc.communicate()
            err += f"\n[harness] killed after {timeout} s"
    sampler.kill_leftovers()  # e.g. Ray daemons of a driver that died: never outlive the run
    run = Run(proc.returncode, t_launch, time.perf_counter() - began, sampler.peak_bytes,
              sampler.peak_processes, out, err)
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            run.result = json.loads(line[len(RESULT_PREFIX):])
    return run


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc``'s descendants, then ``proc`` itself through Popen (which reaps it and
    keeps its return code)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.kill()
    psutil.wait_procs(children, timeout=5)


# ---- from a child's round stamps to the table's figures ---------------------------------------
@dataclass
class Figures:
    """One row of the table."""

    workload: str
    framework: str
    s_per_round: float | None
    first_round_s: float | None  # from launch to the end of round 1 (imports, start-up, round)
    peak_rss_mb: float
    accuracy: float | None
    mb_down: float | None
    mb_up: float | None
    rounds: int
    ok: bool = True
    note: str = ""


def figures(workload: str, framework: str, run: Run) -> Figures:
    """s/round is the mean round time over rounds 2..R (round 1 pays for warm-up)."""
    stamps = sorted(run.result.get("rounds", []), key=lambda r: r["round"])
    ends = [float(r["t_end"]) for r in stamps]
    per_round = (
        (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) >= 2 else None
    )

    def mb(key: str) -> float | None:
        value = run.result.get(key)
        return None if value is None else float(value) / 1e6

    ok = run.returncode == 0 and bool(stamps)
    note = "" if ok else (run.stderr.strip().splitlines() or ["failed"])[-1][:120]
    return Figures(
        workload=workload, framework=framework, s_per_round=per_round,
        first_round_s=(ends[0] - run.t_launch) if ends else None,
        peak_rss_mb=run.peak_rss_bytes / 1e6,
        accuracy=stamps[-1].get("accuracy") if stamps else None,
        mb_down=mb("bytes_down"), mb_up=mb("bytes_up"), rounds=len(stamps), ok=ok, note=note,
    )


def machine_description() -> str:
    """CPU model, cores, memory, OS, Python, and the load when the run started."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {psutil.cpu_count()} cores, {mem_gb:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
            f"load average at start {load}")


# ---- the markdown table ------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def render_table(rows: Sequence[Figures], baseline: Mapping[str, str]) -> str:
    """A markdown table; ``vs bare`` divides s/round by the row named ``baseline[workload]``."""
    head = ("| workload | framework | s/round | vs bare | first round from launch, s | "
            "peak RSS of tree, MB | final accuracy | MB down / up |")
    lines = [head, "|" + "---|" * 8]
    by_key = {(r.workload, r.framework): r for r in rows}
    for r in rows:
        base = by_key.get((r.workload, baseline.get(r.workload, "bare")))
        ratio = (
            f"{r.s_per_round / base.s_per_round:.2f}x"
            if r.s_per_round and base is not None and base.s_per_round else "-"
        )
        moved = "-" if r.mb_down is None and r.mb_up is None else (
            f"{_num(r.mb_down)} / {_num(r.mb_up)}")
        acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
        framework = r.framework if r.ok else f"{r.framework} (FAILED: {r.note})"
        lines.append(
            f"| {r.workload} | {framework} | {_num(r.s_per_round)} | {ratio} | "
            f"{_num(r.first_round_s)} | {r.peak_rss_mb:.0f} | {acc} | {moved} |"
        )
    return "\n".join(lines) + "\n"


def render_doc(
    rows: Sequence[Figures], *, baseline: Mapping[str, str], date: str, machine: str,
    command: str, preamble: str = "", notes: Sequence[str] = (),
) -> str:
    parts = [
        "# Benchmarks: foedus vs Flower vs a bare loop\n",
        preamble.strip() + "\n" if preamble else "",
        f"Run: `{command}` on {date}.\n",
        f"Machine: {machine}.\n",
        render_table(rows, baseline),
    ]
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(p for p in parts if p)
