"""What a site keeps on disk about its actors, so that a site killed and restarted rejoins the
jobs it was in.

Each actor the site starts has a record, ``state_dir/jobs/JOB/ACTOR.json``: its pid, the
catalog entry it uses, who submitted the job and what it may spend (the ledger's charge), and
whether it has ended (a record is marked ``ended`` once the site has reported and settled it).
A restarted site reads every record not ended (:func:`unfinished`):

* an actor whose process still runs (the same pid, and its command line names the job: a
  recycled pid is never adopted) is **adopted**: watched through :class:`Adopted`, which offers
  the parts of :class:`subprocess.Popen` the site uses, its exit status read from the actor's
  progress file (:mod:`foedus.federation.site_actor`) since it is no longer the site's child;
* an actor whose process is gone is started again once the coordinator says its job is still
  on; the new process takes part from the round the server is in: the server broadcasts the
  current round's model retained, and refuses a second update for a round from the same
  client (``duplicate``), so no round is lost or counted twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from foedus.federation.site_actor import read_progress

__all__ = ["ActorRecord", "Adopted", "pid_runs", "unfinished"]


@dataclass
class ActorRecord:
    """One actor's record (see the module docstring)."""

    job_id: str
    actor: str
    pid: int | None = None
    dataset: str | None = None
    submitter: str | None = None
    charge: str | None = None  # the ledger's Charge as JSON, None for a job without DP
    delta: float | None = None  # the delta its epsilon is stated at
    ended: bool = False

    def path(self, state_dir: Path) -> Path:
        return state_dir / "jobs" / self.job_id / f"{self.actor}.json"

    def save(self, state_dir: Path) -> None:
        path = self.path(state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ActorRecord:
        return cls(**json.loads(path.read_text()))


def unfinished(state_dir: Path) -> list[ActorRecord]:
    """Every actor record in ``state_dir`` not marked ended."""
    out = []
    for path in sorted((state_dir / "jobs").glob("*/*.json")):
        try:
            record = ActorRecord.load(path)
        except (ValueError, TypeError):
            continue
        if not record.ended:
            out.append(record)
    return out


def pid_runs(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive, not a zombie, and its command line names ``marker``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return marker.encode() in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Adopted:
    """A running actor process this site did not start (it survived the site's restart):
    ``pid``, :meth:`poll`, :meth:`wait` and ``returncode`` like :class:`subprocess.Popen`."""

    def __init__(self, pid: int, marker: str, progress: Path) -> None:
        self.pid = pid
        self.marker = marker
        self.progress = progress
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not pid_runs(self.pid, self.marker):
            found = read_progress(self.progress)
            # no end line: killed (SIGKILL's status, as Popen reports it)
            self.returncode = found.last_end if found and found.last_end is not None else -9
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.marker, timeout or 0.0)
            time.sleep(0.05)  # not our child: no wait() to block on, only /proc to look at
        assert self.returncode is not None
        return self.returncode
