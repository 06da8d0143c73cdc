"""One workload in foedus's simulation engine. Run with foedus's venv (``.venv/bin/python``).

    python bench/vs_flower/foedus_run.py WORKLOAD_JSON [--backend thread] [--workers 2]

foedus builds the clients' shares, the test split and the initial model from the job spec
(``Workload.job()``) itself; ``workloads.write_data`` wrote the bare loop's and Flower's copy with
the very same builder, so all three train on the same rows from the same weights.

Prints one line ``RESULT {json}`` with a wall-clock timestamp per round end (stamped by a round
listener) plus the engine's own ``extra`` (start-up, bytes up and down).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads
from workloads import Workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("--backend", default="thread")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    raw = json.loads(args.workload)
    work = Workload(**{**raw, "hidden": tuple(raw["hidden"])})

    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins
    from foedus.roles.server import RoundRecord
    from foedus.sim import run_simulation_sync

    load_plugins()
    workloads.register_datasets()
    spec = JobSpec.from_dict(work.job())
    rounds: list[dict[str, Any]] = []

    def stamp(record: RoundRecord) -> None:
        rounds.append({"round": record.round, "t_end": time.time(),
                       "accuracy": record.metrics.get("accuracy"),
                       "duration_s": record.duration_s})

    t_ready = time.time()
    result = run_simulation_sync(spec, backend=args.backend, workers=args.workers,
                                 on_round=stamp)
    extra = result.extra
    print("RESULT " + json.dumps({
        "rounds": rounds, "t_ready": t_ready, "bytes_down": extra.get("bytes_down"),
        "bytes_up": extra.get("bytes_up"), "startup_s": extra.get("startup_s"),
        "backend": args.backend, "workers": args.workers,
    }, default=str), flush=True)


if __name__ == "__main__":
    main()
