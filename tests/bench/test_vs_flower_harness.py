"""The vs-Flower benchmark's measuring harness: tree-wide RSS sampling, figures, the table.

No Flower, torch or foedus engine here: the harness is checked on trivial Python subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("psutil")

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "vs_flower" / "harness.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vs_flower_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


harness = _load()

MIB = 2**20
# a parent that starts a child holding ~120 MiB for a while, then reports one round stamp
GRANDCHILD = "import time; b = bytearray({mib} * 2**20); b[::4096] = b'x' * len(b[::4096]); " \
             "time.sleep({hold})"
PARENT = """
import json, subprocess, sys, time
subprocess.run([sys.executable, "-c", {child!r}], check=True)
print("RESULT " + json.dumps({{"rounds": [{{"round": 1, "t_end": time.time(), "accuracy": 0.5}}],
                              "bytes_down": 2000000, "bytes_up": 1000000}}))
"""


def _parent(mib: int, hold: float) -> list[str]:
    child = GRANDCHILD.format(mib=mib, hold=hold)
    return [sys.executable, "-c", PARENT.format(child=child)]


def test_sampler_counts_memory_held_by_a_grandchild_process() -> None:
    run = harness.launch(_parent(mib=120, hold=0.8), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.peak_rss_bytes >= 120 * MIB  # the launched process alone holds far less
    assert run.peak_processes >= 2


def test_launch_parses_the_result_line_and_times_from_launch() -> None:
    before = time.time()
    run = harness.launch(_parent(mib=1, hold=0.0), timeout=60)
    assert run.result["bytes_down"] == 2_000_000
    assert before <= run.t_launch <= run.result["rounds"][0]["t_end"]


def test_a_run_past_its_timeout_is_killed_with_its_whole_tree() -> None:
    run = harness.launch(_parent(mib=1, hold=30), timeout=1.0)
    assert run.returncode != 0
    assert "killed after" in run.stderr
    assert run.wall_s < 20


def _run(stamps: list[tuple[int, float]], *, returncode: int = 0, t_launch: float = 100.0,
         stderr: str = "") -> object:
    result = {"rounds": [{"round": r, "t_end": t, "accuracy": 0.1 * r} for r, t in stamps],
              "bytes_down": 3_000_000, "bytes_up": None}
    return harness.Run(returncode, t_launch, 1.0, 50 * 10**6, 3, json.dumps(result), stderr,
                       result)


def test_seconds_per_round_leave_out_the_first_round_and_first_round_counts_from_launch() -> None:
    # rounds end at +5 (start-up and round 1), then +6, +8 and +9: rounds 2..4 took 1, 2, 1 s
    fig = harness.figures("w", "bare", _run([(3, 108.0), (1, 105.0), (2, 106.0), (4, 109.0)]))
    assert fig.s_per_round == pytest.approx((109.0 - 105.0) / 3)
    assert fig.first_round_s == pytest.approx(5.0)
    assert fig.accuracy == pytest.approx(0.4)  # the last round's
    assert (fig.mb_down, fig.mb_up, fig.peak_rss_mb) == (3.0, None, 50.0)
    assert fig.ok


def test_a_failed_run_is_marked_with_its_last_error_line() -> None:
    fig = harness.figures("w", "flower", _run([], returncode=1, stderr="x\nRuntimeError: boom"))
    assert not fig.ok
    assert fig.s_per_round is None
    assert "RuntimeError: boom" in fig.note


def test_table_divides_each_row_by_its_workloads_baseline() -> None:
    rows = [
        harness.figures("small", "bare", _run([(1, 101.0), (2, 102.0)])),
        harness.figures("small", "foedus", _run([(1, 101.0), (2, 103.0)])),
        harness.figures("big", "bare+ser", _run([(1, 101.0), (2, 105.0)])),
        harness.figures("big", "flower", _run([(1, 101.0), (2, 111.0)])),
        harness.figures("big", "broken", _run([], returncode=2, stderr="OSError: gone")),
    ]
    table = harness.render_table(rows, {"big": "bare+ser"})
    lines = table.strip().splitlines()
    assert lines[0].startswith("| workload | framework | s/round | vs bare |")
    assert len(lines) == 2 + len(rows)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    ratio = {(c[0], c[1]): c[3] for c in cells}
    assert ratio[("small", "foedus")] == "2.00x"
    assert ratio[("big", "flower")] == "2.50x"
    assert ratio[("big", "bare+ser")] == "1.00x"
    assert "FAILED: OSError: gone" in table


def test_document_names_the_date_machine_and_command() -> None:
    rows = [harness.figures("small", "bare", _run([(1, 101.0), (2, 102.0)]))]
    machine = harness.machine_description()
    doc = harness.render_doc(rows, baseline={}, date="2026-11-25 12:00 UTC", machine=machine,
                             command="python bench/vs_flower/run.py --quick",
                             notes=["the machine was busy"])
    assert "2026-11-25 12:00 UTC" in doc
    assert machine in doc and "cores" in machine
    assert "`python bench/vs_flower/run.py --quick`" in doc
    assert "- the machine was busy" in doc
