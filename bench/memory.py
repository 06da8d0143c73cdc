"""Peak memory with a large model: foedus's simulation against a bare loop.

Workload: a 4.77M-parameter torch MLP (64-2147-2147-10, 19 MB of float32) on digits, 20 IID
clients, one local epoch, FedAvg, ``ROUNDS`` rounds. foedus runs it as ``foedus sim`` does
(thread backend, one worker); the bare loop does the same training with one torch model and
averages in numpy into a running sum. Each runs in its own fresh process, which reports its
peak resident memory (``ru_maxrss``); the two alternate ``--repeats`` times.

How many model copies foedus holds at once is counted with ``tracemalloc`` by
``tests/sim/test_model_copies.py`` (docs/architecture.md, "Model copies per actor").

Run: ``.venv/bin/python bench/memory.py [--repeats 3] [--write FILE]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fresh  # the fresh-process measuring loop, shared with bench/process_backend.py

HIDDEN = (2147, 2147)
CLIENTS = 20
ROUNDS = 3
LR = 0.05


def job(rounds: int = ROUNDS) -> dict[str, Any]:
    return {
        "job_id": "memory", "seed": 0, "rounds": rounds, "round_timeout": 3600.0,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": CLIENTS, "epochs": 1},
        "model": {"type": "torch-mlp", "params": {"hidden": list(HIDDEN), "lr": LR}},
        "aggregator": "fedavg",
    }


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_foedus() -> dict[str, Any]:
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins
    from foedus.sim.engine import run_simulation_sync

    load_plugins()
    result = run_simulation_sync(JobSpec.from_dict(job()), backend="thread", workers=1)
    return {"peak_mb": peak_mb(), "accuracy": result.final_metrics.get("accuracy")}


def run_bare() -> dict[str, Any]:
    import numpy as np
    import torch

    from foedus.config.parts import build_parts
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins

    load_plugins()
    parts = build_parts(JobSpec.from_dict(job()))  # the same shares and initial weights
    torch.manual_seed(0)
    widths = [64, *HIDDEN, 10]
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    state = model.state_dict()
    global_params = {k: np.array(v, copy=True) for k, v in parts.initial_params().items()}
    for rnd in range(ROUNDS):
        total = {k: np.zeros_like(v) for k, v in global_params.items()}
        weight = 0
        for index, share in enumerate(parts.shares):
            for k, v in state.items():
                v.copy_(torch.from_numpy(global_params[k]))
            optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
            x, y = torch.from_numpy(share.x), torch.from_numpy(share.y)
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(
                rnd * 1000 + index))
            for start in range(0, len(y), 32):
                batch = order[start:start + 32]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
            for k, v in state.items():
                total[k] += v.numpy() * len(y)
            weight += len(y)
        global_params = {k: v / weight for k, v in total.items()}
    for k, v in state.items():
        v.copy_(torch.from_numpy(global_params[k]))
    with torch.no_grad():
        logits = model(torch.from_numpy(parts.test.x))
    accuracy = float((logits.argmax(1).numpy() == parts.test.y).mean())
    return {"peak_mb": peak_mb(), "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--child", choices=["bare", "foedus"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_bare() if args.child == "bare" else run_foedus()))
        return
    runs = fresh.alternate(__file__, {kind: ["--child", kind] for kind in ("bare", "foedus")},
                           args.repeats)
    bare = statistics.median(r["peak_mb"] for r in runs["bare"])
    lines = [
        "# Peak memory with a 4.77M-parameter model", "",
        f"`bench/memory.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"64-2147-2147-10 MLP (19 MB float32), {CLIENTS} clients, {ROUNDS} rounds, thread "
        f"backend with one worker; median of {args.repeats} fresh processes each.", "",
        "| run | peak RSS (MB) | runs (MB) | vs bare | accuracy |", "|---|---:|---|---:|---:|",
    ]
    for kind, rs in runs.items():
        peak = statistics.median(r["peak_mb"] for r in rs)
        each = ", ".join(f"{r['peak_mb']:.0f}" for r in rs)
        lines.append(f"| {kind} | {peak:.0f} | {each} "
                     f"| {peak / bare:.2f}x | {rs[0]['accuracy']:.4f} |")
    fresh.publish(lines, args.write)


if __name__ == "__main__":
    main()
