"""The process the coordinator starts for a job's actors that hold no data (its server, a
tree's edge aggregators): ``python -m foedus.federation.actor JOB.yaml --actors server,...
--records FILE --result FILE``.

It is ``foedus actor JOB server,...`` (the same :func:`foedus.runner.run_actors`) plus two
files the coordinator reads, because a long-running service needs the rounds *as they end*
(``foedus actor`` prints a progress bar for people) and an outcome it can still read after its own
restart, when this process is no longer its child and its exit status is lost:

* ``--records``: one JSON line per round record, appended and flushed as the round ends;
* ``--result``: written once at the end (atomically): ``{"status": 0|1|2, "summary"|"error"}``,
  0 when the job produced a model, 1 when it ran without one, 2 for a job it refuses.

The final model is written (atomically, before the result) beside the result file as
:data:`MODEL_FILE`, in the project's model-file format (:func:`foedus.mlops.modelfile.
encode_model`: the wire format, checksummed, never unpickled), which ``foedus result``
downloads and MLflow's and the adapters' loaders read.

The job file carries ``checkpoint_dir``, so a restarted server resumes after its last round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foedus.config.parts import JobParts, client_ids, pipeline_of
from foedus.config.spec import JobSpec, load_job
from foedus.core.errors import FoedusError
from foedus.data.shares import load_job_data
from foedus.mlops.modelfile import encode_model
from foedus.roles.server import RoundRecord
from foedus.runner import prepare, run_actors
from foedus.transport.base import transports

#: the final model's file, in the job's directory beside ``--result``
MODEL_FILE = "model.foedus"


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _gate(go: Path, seconds: float) -> bool:
    """Wait until ``go`` exists (True) or ``seconds`` pass (False). A file, not a pipe, so the
    gate survives a coordinator restart: the new one opens it the same way."""
    deadline = time.monotonic() + seconds
    while not go.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # a stat a tick: nothing to compute while the sites answer
    return True


def _warm(spec: JobSpec) -> None:
    """While gated: do once what the actors will do first (read the data, build the model
    and the aggregator, import the transport), so the libraries they import (scikit-learn,
    the transport's server) are loaded before the go rather than after it. Nothing is
    started (no MLOps session, no transport opened); a failure here is left for the real
    start to report."""
    try:
        data = load_job_data(spec.data, client_ids(spec), spec.seed, clients=[],
                             server_data=True)
        parts = JobParts(spec, data.spec, data.shares, data.test, data.server_evaluates,
                         pipeline_of(spec))
        parts.evaluator()
        parts.make_aggregator()
        transports.get(spec.transport.type)
    except Exception as exc:  # the same error comes back, reported, when the actors start
        print(f"foedus: warming up: {type(exc).__name__}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foedus.federation.actor")
    parser.add_argument("job")
    parser.add_argument("--actors", help="comma-separated actor ids (default: the leader)")
    parser.add_argument("--start-when", metavar="FILE",
                        help="load and check everything, then start the actors only once FILE "
                             "exists (the coordinator's go: every site accepted)")
    parser.add_argument("--give-up-after", type=float, default=3600.0, metavar="SECONDS",
                        help="with --start-when: exit (status 3) if FILE has not appeared by "
                             "then (default 3600)")
    parser.add_argument("--records", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    records = Path(args.records)
    result_path = Path(args.result)

    def on_round(record: RoundRecord) -> None:
        with records.open("a") as f:
            f.write(json.dumps(record.to_dict()) + "\n")
            f.flush()

    try:
        spec = load_job(args.job)
        topology = prepare(spec)  # plugins loaded, the job checked: the slow part of a start
        actors = args.actors.split(",") if args.actors else [topology.leader or "server"]
        if args.start_when:
            _warm(spec)
        if args.start_when and not _gate(Path(args.start_when), args.give_up_after):
            print(f"foedus: {args.start_when} never appeared: the job never started",
                  file=sys.stderr)
            return 3
        result = asyncio.run(run_actors(spec, actors, on_round=on_round))
    except FoedusError as exc:
        _write_atomic(result_path, {"status": 2, "error": str(exc)})
        print(f"foedus: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a crash is reported as the job's failure, with its reason
        _write_atomic(result_path, {"status": 1, "error": f"{type(exc).__name__}: {exc}"})
        raise
    if result.params:
        model = result_path.with_name(MODEL_FILE)
        last = result.history[-1].round if result.history else 0
        tmp = model.with_suffix(".tmp")
        tmp.write_bytes(encode_model(result.params, job_id=result.job_id, round=last))
        os.replace(tmp, model)
    summary = result.summary()
    summary.pop("history", None)  # the rounds are in --records already
    status = 1 if result.failure else 0
    _write_atomic(result_path, {"status": status, "summary": summary,
                                **({"error": result.failure} if result.failure else {})})
    return status


if __name__ == "__main__":
    sys.exit(main())
