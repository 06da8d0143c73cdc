"""foedus vs Flower vs a bare torch loop, side by side, in one command.

    .venv/bin/python bench/vs_flower/run.py [--quick] [--only mlp-10,mlp-100] [--skip flower]

Needs the Flower venv first: ``bash bench/vs_flower/setup.sh`` (Flower is never a dependency of
foedus). Every framework runs each workload as its own subprocess (foedus and the bare loop with
this venv's python, Flower with ``bench/vs_flower/.venv-flower/bin/python``), one after the
other, while a sampler adds up the RSS of the subprocess's whole tree every 50 ms.

Figures: s/round = mean round time over rounds 2..10 (round ends are wall-clock stamps taken
inside each run, so round 1's warm-up is excluded); first round = from launching the subprocess
to the end of round 1 (interpreter, imports, data, framework start-up and one round); peak RSS
of the process tree; accuracy of the global model on digits' test split after the last round;
bytes moved down (models to clients) and up (updates to the server): foedus counts its encoded
wire messages, the bare loop with serialization counts its byte strings, Flower's figure is
computed (``ArrayRecord.count_bytes()`` times clients; Flower's simulation moves its messages
in memory).

Writes the table to ``--out`` (only when given, e.g. ``--out docs/benchmarks-vs-flower.md``:
by default it is printed, never written over a tracked file) and the data, logs and raw
results as JSON under ``--cache`` (default: ``foedus-vs-flower`` in the system's temporary
directory, outside the checkout).  ``--quick`` runs only the 10- and 100-client workloads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import workloads  # noqa: E402

FOEDUS_PY = ROOT / ".venv" / "bin" / "python"
FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"
CACHE = Path(tempfile.gettempdir()) / "foedus-vs-flower"
FRAMEWORKS = ("bare", "foedus", "flower")

PREAMBLE = """
`bench/vs_flower/` runs the same federated workloads in foedus's simulation engine, in Flower's
simulation runtime (Ray backend, installed only in the benchmark's own venv) and in a bare torch
loop (no framework: for each client train, then average). All three train on the same IID shares
of scikit-learn's digits (foedus's own job builder writes them for the other two), from the same
initial weights, with the same local training: one epoch of SGD (five for the 100- and
1,000-client workloads, whose clients hold ~14 rows or fewer and otherwise stay at chance; lr
0.05, momentum 0.9, a fresh optimizer per client and round), batches of 32 shuffled by a seed
drawn from (job seed, client, round); FedAvg weighted by examples; central evaluation after
every round. Models: MLP 64-32-10 (2,410 parameters) and MLP 64-3130-3130-10 (10,034,790
parameters, 40 MB of float32). 10 rounds, every client every round, except `sampled-10k`: 10,000
registered clients (digits' training split repeated 100 times, ~14 rows each), 100 sampled per
round.

How each runs: foedus `run_simulation_sync(spec, backend="thread", workers=W)` (W from
`--workers`, default 1; the run's setting is noted below the table); Flower 1.42
`flwr.simulation.run_simulation` with the message-based `FedAvg`, one CPU per Ray actor (two
actors on two cores), federated evaluation off, central `evaluate_fn`; the bare loop is one
sequential Python loop (one core) with `torch.set_num_threads(1)` for the small MLP (its tiny
ops ran 5-40x slower with two intra-op threads on this loaded machine) and torch's default
threads for the 10M model; foedus gets the same torch thread setting as the bare loop; Flower
uses two actors. `bare+ser` adds numpy
`tobytes`/`frombuffer` of the model and every update (the issue's reference for the 10M model).
"""


def torch_threads(work: workloads.Workload) -> str:
    """The same torch intra-op threads for foedus and the bare loop: one for the small MLP
    (its tiny ops only lose from more), torch's default (0) for the 10M model."""
    return "0" if max(work.hidden) > 1000 else "1"


def foedus_cmd(work: workloads.Workload, backend: str, workers: int) -> list[str]:
    return [str(FOEDUS_PY), str(HERE / "foedus_run.py"), work.to_json(),
            "--backend", backend, "--workers", str(workers), "--threads", torch_threads(work)]


def bare_cmd(work: workloads.Workload, data: Path, serialize: bool) -> list[str]:
    return [str(FOEDUS_PY), str(HERE / "bare.py"), work.to_json(), str(data),
            "--threads", torch_threads(work), *(["--serialize"] if serialize else [])]


def flower_cmd(work: workloads.Workload, data: Path) -> list[str]:
    return [str(FLOWER_PY), str(HERE / "flower_run.py"), work.to_json(), str(data)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the 10 and 100 client rows")
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--skip", default="", help="comma-separated frameworks to skip")
    parser.add_argument("--backend", default="thread", help="foedus simulation backend")
    parser.add_argument("--workers", type=int, default=1, help="foedus simulation workers")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument("--out", type=Path, help="write the doc page here (default: print)")
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help=f"data, logs and results.json (default {CACHE})")
    parser.add_argument("--note", action="append", default=[], help="extra note for the doc")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the previous run's rows (CACHE/results.json) for the "
                             "workloads and frameworks not run now, e.g. to re-run only foedus")
    args = parser.parse_args()

    chosen = [w for w in workloads.WORKLOADS.values()
              if (not args.quick or w.quick) and (not args.only or w.name in args.only.split(","))]
    skip = set(filter(None, args.skip.split(",")))
    if "flower" not in skip and not FLOWER_PY.exists():
        sys.exit(f"{FLOWER_PY} is missing: run `bash bench/vs_flower/setup.sh` first "
                 "(or pass --skip flower)")
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    env = {"FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    machine = harness.machine_description()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows: list[harness.Figures] = []
    baseline: dict[str, str] = {}
    for work in chosen:
        data = cache / f"{work.name}.npz"
        workloads.write_data(work, data)
        plan: list[tuple[str, list[str]]] = []
        if "bare" not in skip:
            plan.append(("bare", bare_cmd(work, data, serialize=False)))
            if work.serialize:
                plan.append(("bare+ser", bare_cmd(work, data, serialize=True)))
                baseline[work.name] = "bare+ser"
        if "foedus" not in skip:
            plan.append(("foedus", foedus_cmd(work, args.backend, args.workers)))
        if "flower" not in skip:
            plan.append(("flower", flower_cmd(work, data)))
        for framework, cmd in plan:
            print(f"[{work.name}] {framework} ...", flush=True)
            run = harness.launch(cmd, env=env, timeout=args.timeout)
            fig = harness.figures(work.name, framework, run)
            rows.append(fig)
            (cache / f"{work.name}.{framework}.log").write_text(run.stdout + "\n" + run.stderr)
            print(f"    s/round {fig.s_per_round}  first {fig.first_round_s}  "
                  f"rss {fig.peak_rss_mb:.0f} MB  acc {fig.accuracy}  wall {run.wall_s:.1f} s"
                  + ("" if fig.ok else f"  FAILED rc={run.returncode}: {fig.note}"), flush=True)
        data.unlink(missing_ok=True)
    previous = cache / "results.json"
    if args.reuse and previous.exists():
        old = json.loads(previous.read_text())
        fresh = {(r.workload, r.framework) for r in rows}
        kept = [harness.Figures(**r) for r in old["rows"]
                if (r["workload"], r["framework"]) not in fresh]
        order = {name: i for i, name in enumerate(workloads.WORKLOADS)}
        rank = {"bare": 0, "bare+ser": 1, "foedus": 2, "flower": 3}
        rows = sorted([*kept, *rows], key=lambda r: (order.get(r.workload, 99),
                                                     rank.get(r.framework, 9)))
        for r in rows:
            if r.framework == "bare+ser":
                baseline[r.workload] = "bare+ser"
        args.note.append(f"Rows not re-run on {started} come from the run of {old['date']} "
                         f"(machine then: {old['machine']}).")
        started = f"{started} (partly re-run, see notes)"
    previous.write_text(json.dumps(
        {"date": started, "machine": machine, "rows": [asdict(r) for r in rows]}, indent=1))
    # the command as run (the options that change which rows ran and how), for the page
    command = "python bench/vs_flower/run.py" + "".join(
        f" {flag}" for flag, on in (("--quick", args.quick), (f"--only {args.only}", args.only),
                                    (f"--skip {args.skip}", args.skip),
                                    (f"--workers {args.workers}", args.workers != 1),
                                    ("--reuse", args.reuse)) if on)
    notes = [
        "The machine was shared with other jobs (other helpers' tests and benchmarks) while "
        "this ran; absolute times are noisy, compare rows of one run with each other.",
        "`vs bare` divides s/round by the bare loop's (by `bare+ser` for the 10M model).",
        "Peak RSS sums every process of the run's tree (Ray: GCS, raylet, workers), sampled "
        "every 50 ms; shared library pages count once per process.",
        "Flower's bytes are computed, not measured; foedus counts its encoded wire messages.",
        "Flower samples with its own (seeded) `random.sample`, so in `sampled-10k` its "
        "clients differ from foedus's and the bare loop's.",
        *args.note,
    ]
    print(harness.render_table(rows, baseline))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(harness.render_doc(
            rows, baseline=baseline, date=started, machine=machine, command=command,
            preamble=PREAMBLE, notes=notes))
        print(f"written to {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    main()
