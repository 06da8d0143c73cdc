"""The process a site starts for a job's client: ``python -m foedus.federation.site_actor
JOB.yaml ACTOR --progress FILE``.

It is ``foedus actor JOB ACTOR`` (the same :func:`foedus.runner.run_actors`) plus a progress
file the site reads, because the site must know, even after its own restart and even for a
process it did not start, how many updates left this process: that is what the job spent of
the dataset's privacy budget (:mod:`foedus.federation.ledger`).

The progress file is JSON lines, appended and flushed (and fsynced) as things happen:

* ``{"start": PID}`` when a process starts (a restarted actor appends to the same file);
* ``{"round": R, "update": true}`` right after each answer was handed to the transport
  (``update: false`` for an error answer, which carries no parameters);
* ``{"round": R, "update": true, "unconfirmed": true}`` for an update whose sending was never
  confirmed because the process was stopped mid-publish (its transport retrying a gone hub,
  or a send in flight): it may have reached the server, so it counts as sent;
* ``{"end": STATUS}`` when the process ends by itself or on SIGTERM (0: the job's stop); a
  process still ending :data:`STOP_GRACE_S` seconds after SIGTERM (its transport retrying a
  peer that is gone) exits without one.

With ``--records FILE``, the round records of the job that end in this process (a swarm
peer's rounds, a vertical job's rounds at its label party: jobs with no actor at the
coordinator) are appended to FILE, one JSON line each; the site forwards them.

A process killed before its ``end`` line may have sent one update it did not record, so
:func:`sent_upper` counts one more for each ``start`` without an ``end``: never fewer updates
than were sent. A file without any round line says nothing (the actor is not a client whose
answers this process sees, e.g. a swarm peer, or it died before its first): the count is then
unknown, and the ledger keeps the job's whole reservation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foedus.config.spec import load_job
from foedus.core.errors import FoedusError
from foedus.core.message import Kind, Message
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord
from foedus.runner import run_actors

__all__ = ["Progress", "main", "read_progress", "sent_upper"]


#: how long a stopped actor may take to end cleanly before it exits anyway, without an end
#: line (as if killed: :func:`sent_upper` counts one update more). Its transport may hold a
#: cancelled run for its whole reconnect timeout (a minute) while it retries delivering to a
#: hub or broker that is gone, as after a cancelled job's server was stopped; the site then
#: waited 10 s for it, heartbeats held, before SIGKILL.
STOP_GRACE_S = 3.0


def _append(path: Path, entry: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Progress:
    """What a progress file says: processes started and ended, updates sent, the last
    process's end status (None while it runs or when it died without one)."""

    starts: int
    ends: int
    answers: int  # round lines: updates and error answers
    updates: int
    last_end: int | None

    @property
    def sent_upper(self) -> int | None:
        if not self.answers:
            return None
        return self.updates + max(0, self.starts - self.ends)


def read_progress(path: Path) -> Progress | None:
    """The progress file's summary, None when there is none (a line being written is
    ignored)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    starts = ends = answers = updates = 0
    last_end: int | None = None
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "start" in entry:
            starts += 1
            last_end = None
        elif "end" in entry:
            ends += 1
            last_end = int(entry["end"])
        elif "round" in entry:
            answers += 1
            updates += bool(entry.get("update"))
    return Progress(starts, ends, answers, updates, last_end)


def sent_upper(path: Path) -> int | None:
    """An upper bound on the updates the actor's processes sent; None when unknown."""
    found = read_progress(path)
    return None if found is None else found.sent_upper


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foedus.federation.site_actor")
    parser.add_argument("job")
    parser.add_argument("actor")
    parser.add_argument("--progress", required=True)
    parser.add_argument("--records", help="append each round record of the job that ends in "
                                          "this process (a swarm peer's, a vertical job's "
                                          "label party's) to this file, one JSON line each")
    args = parser.parse_args(argv)
    progress = Path(args.progress)
    _append(progress, {"start": os.getpid()})

    def answered(client: ClientPod, answer: Message, _moved: tuple[int, int]) -> None:
        sent = answer.error is None and answer.kind is Kind.UPDATE
        _append(progress, {"round": answer.round, "update": sent})
        print(f"{client.client_id} round {answer.round:>3}: "
              f"{'sent its update' if sent else f'sent an error: {answer.error}'}",
              file=sys.stderr, flush=True)

    def recorded(record: RoundRecord) -> None:
        if args.records:  # the site sends them to the coordinator with its heartbeats
            with Path(args.records).open("a") as f:
                f.write(json.dumps(record.to_dict()) + "\n")

    def unconfirmed(client: ClientPod, answer: Message) -> None:
        if answer.error is not None or answer.kind is not Kind.UPDATE:
            return  # an error answer carries no parameters: nothing spent
        _append(progress, {"round": answer.round, "update": True, "unconfirmed": True})
        print(f"{client.client_id} round {answer.round:>3}: stopped while sending its update; "
              "counted as sent (it may have reached the server)", file=sys.stderr, flush=True)

    def waiting(seconds: float) -> None:
        print(f"foedus: no model from the job's server after {seconds:.0f}s; waiting",
              file=sys.stderr, flush=True)

    async def run() -> int:
        # SIGTERM cancels the run between two steps of the event loop, never between an
        # update's send and its progress line (they run in one step), so the count stays exact
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.TimerHandle] = []

        def give_up() -> None:
            # without an end line: an update may be on its way (its line is written once it
            # has left), so the count keeps one more, as for a killed process
            print(f"foedus: {args.actor} still ending {STOP_GRACE_S:g}s after SIGTERM "
                  "(its transport is still delivering, or retrying a peer that is gone); "
                  "exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signal.SIGTERM)

        def terminate() -> None:
            task.cancel()
            if not stopping:
                stopping.append(loop.call_later(STOP_GRACE_S, give_up))

        loop.add_signal_handler(signal.SIGTERM, terminate)
        result = await run_actors(load_job(args.job), [args.actor], on_client_round=answered,
                                  on_waiting=waiting, on_round=recorded,
                                  on_client_unconfirmed=unconfirmed)
        trained = result.extra.get("rounds_trained", {}).get(args.actor, 0)
        print(f"foedus: {args.actor} finished after {trained} rounds", file=sys.stderr,
              flush=True)
        return 0

    try:
        status = asyncio.run(run())
    except asyncio.CancelledError:
        status = 128 + signal.SIGTERM
    except FoedusError as exc:
        print(f"foedus: error: {exc}", file=sys.stderr)
        status = 2
    # anything else: no end line, so the count keeps one update this process may have sent
    _append(progress, {"end": status})
    return status


if __name__ == "__main__":
    sys.exit(main())
