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

With ``--start-when GO`` (the coordinator starts the process at submit, before the sites
answer) everything that can be done before the job may start is done while it waits for the
file ``GO``: the job checked, its data read, its model, evaluator and aggregator built
(handed to the run, not built again), and the job's hub, when this process hosts it
(``https``/``grpc`` with ``serve``), listening, so the sites' clients connect and subscribe
before the go. After the go only the actors start: round 1 begins at once.

The process's stderr (the job's ``server.log``) gets foedus's INFO log lines with UTC times
to the millisecond: when the hub listened, when each client subscribed, when the gate
opened (``bench/federation.py`` reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foedus.config.parts import ActorTransports, JobParts, RoundListener, client_ids, pipeline_of
from foedus.config.spec import JobSpec, load_job
from foedus.config.topology import Topology
from foedus.core.errors import FoedusError
from foedus.data.shares import load_job_data
from foedus.mlops.modelfile import encode_model
from foedus.roles.server import RoundRecord
from foedus.runner import JobResult, build_actor_parts, prepare, run_actors
from foedus.transport.hub.client import HubClient

#: the final model's file, in the job's directory beside ``--result``
MODEL_FILE = "model.foedus"
#: what this process's log lines look like: a UTC time to the millisecond, the logger, the text
LOG_FORMAT = "%(asctime)s.%(msecs)03dZ %(name)s: %(message)s"
LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

log = logging.getLogger("foedus.federation.actor")


def _log_to_stderr() -> None:
    """foedus's INFO lines, with their times, to stderr (the job's log): a service's process
    is read after the fact, by whoever asks why a job started when it did."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(LOG_FORMAT, LOG_TIME_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger("foedus")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def _gate(go: Path, seconds: float) -> bool:
    """Wait until ``go`` exists (True) or ``seconds`` pass (False). A file, not a pipe, so the
    gate survives a coordinator restart: the new one opens it the same way. Awaited, so the
    hub this process already hosts serves the clients that connect meanwhile."""
    deadline = time.monotonic() + seconds
    while not go.exists():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # a stat a tick: nothing to compute while the sites answer
    return True


def _warm(spec: JobSpec, topology: Topology, actors: list[str]) -> JobParts | None:
    """While gated: build what the actors will use first (read the data, build the model,
    the evaluator and the aggregator), so that none of it, nor the libraries it imports
    (scikit-learn), is left for after the go; the parts are handed to the run. A job with
    MLOps integrations gets only the imports: its MLOps session starts with the run, never
    for a job that may yet be refused. A failure here is left for the real start to
    report."""
    try:
        if not spec.mlops:
            return build_actor_parts(spec, topology, actors)
        data = load_job_data(spec.data, client_ids(spec), spec.seed, clients=[],
                             server_data=True)
        parts = JobParts(spec, data.spec, data.shares, data.test, data.server_evaluates,
                         pipeline_of(spec))
        parts.evaluator()
        parts.make_aggregator()
    except Exception as exc:  # the same error comes back, reported, when the actors start
        print(f"foedus: warming up: {type(exc).__name__}: {exc}", file=sys.stderr)
    return None


async def _host(spec: JobSpec, actors: list[str]) -> ActorTransports | None:
    """While gated: start listening now if one of ``actors`` hosts the job's hub (``https``
    or ``grpc`` with ``serve``): the TLS context is loaded, the port bound, and the sites'
    clients, started as their sites accept, connect and subscribe before the go instead of
    after it, so the first round starts as soon as the gate opens. The transport returned
    holds the hub until the run's own transports are done with it; None when no actor here
    hosts one (or it cannot listen yet: the run tries again, and reports the failure)."""
    links = ActorTransports(spec)
    try:
        for actor in actors:
            transport = links.open(actor)
            if isinstance(transport, HubClient) and transport.hosting.may_host \
                    and await transport.host():
                return links
    except (FoedusError, OSError) as exc:
        print(f"foedus: hosting the hub before the go: {type(exc).__name__}: {exc}",
              file=sys.stderr)
    await links.close()
    return None


async def _run(spec: JobSpec, topology: Topology, actors: list[str], gate: Path | None,
               give_up_after: float, on_round: RoundListener) -> JobResult | None:
    """Run the actors, after the gate when there is one (None: it never opened)."""
    parts: JobParts | None = None
    hosted: ActorTransports | None = None
    if gate is not None:
        parts = _warm(spec, topology, actors)
        hosted = await _host(spec, actors)
        log.info("ready: waiting for %s", gate)
        if not await _gate(gate, give_up_after):
            return None  # the process exits: its listening hub goes with it
        log.info("gate open: starting %s", ",".join(actors))
    try:
        return await run_actors(spec, actors, on_round=on_round, parts=parts)
    finally:
        if hosted is not None:
            await hosted.close()  # the last user of the hub: it lingers for the clients


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
    _log_to_stderr()
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
        gate = Path(args.start_when) if args.start_when else None
        found = asyncio.run(_run(spec, topology, actors, gate, args.give_up_after, on_round))
        if found is None:
            print(f"foedus: {args.start_when} never appeared: the job never started",
                  file=sys.stderr)
            return 3
        result = found
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
