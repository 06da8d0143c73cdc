"""What a site keeps on disk about its actors, so that a site killed and restarted rejoins the
jobs it was in.

Each actor the site starts has a record, ``state_dir/jobs/JOB/ACTOR.json``: its pid, the
catalog entry it uses, who submitted the job and what it may spend (the ledger's charge), and
whether it has ended (a record is marked ``ended`` once the site has reported and settled it).
A restarted site reads every record not ended (:func:`unfinished`):

* an actor whose process still runs (the same pid, and the same start time, or for an older
  record without one, a command line naming the job: a recycled pid is never adopted; an
  actor forked from the site's warm process, :mod:`foedus.federation.zygote`, has the
  zygote's command line, so its start time is what identifies it) is **adopted**: watched
  through :class:`Adopted`, which offers the parts of :class:`subprocess.Popen` the site
  uses, its exit status read from the zygote's exit file or the actor's progress file
  (:mod:`foedus.federation.site_actor`) since it is no longer the site's child;
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

__all__ = ["ActorRecord", "Adopted", "pid_runs", "start_time", "unfinished"]


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
    #: the process's start time (clock ticks after boot, /proc/PID/stat): with the pid, its
    #: identity
    started: int | None = None

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


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the state first), None when
    there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (None: no such process)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def pid_runs(pid: int, marker: str, started: int | None = None) -> bool:
    """Whether ``pid`` is alive, not a zombie, and ours: it started at ``started`` when that
    is known, else its command line names ``marker``."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    if started is not None:
        return int(fields[19]) == started
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _unreaped(pid: int, started: int | None) -> bool:
    """Whether ``pid`` is our ended child's zombie, not yet reaped by its parent (the zygote,
    which writes the exit status as it reaps)."""
    fields = _stat(pid)
    return fields is not None and fields[0] == "Z" and started is not None \
        and int(fields[19]) == started


class Adopted:
    """A running actor process that is not this site's child (it survived the site's
    restart, or the site's zygote forked it): ``pid``, :meth:`poll`, :meth:`wait` and
    ``returncode`` like :class:`subprocess.Popen`. Its exit status comes from the zygote's
    ``exit`` file when there is one for this pid, else from its progress file."""

    def __init__(self, pid: int, marker: str, progress: Path, started: int | None = None,
                 exit_file: Path | None = None) -> None:
        self.pid = pid
        self.marker = marker
        self.progress = progress
        self.started = started
        self.exit_file = exit_file
        self.returncode: int | None = None

    def _reaped_status(self) -> int | None:
        if self.exit_file is None:
            return None
        try:
            found = json.loads(self.exit_file.read_text())
        except (OSError, ValueError):
            return None
        return int(found["status"]) if found.get("pid") == self.pid else None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        status = self._reaped_status()
        if status is None and (pid_runs(self.pid, self.marker, self.started)
                               or _unreaped(self.pid, self.started)):
            return None
        if status is None:  # the zygote writes the file before it reaps: read it again, as
            status = self._reaped_status()  # it may have done both since the first reading
        if status is None:
            found = read_progress(self.progress)
            # no end line: killed (SIGKILL's status, as Popen reports it)
            status = found.last_end if found and found.last_end is not None else -9
        self.returncode = status
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.marker, timeout or 0.0)
            time.sleep(0.05)  # not our child: no wait() to block on, only /proc to look at
        assert self.returncode is not None
        return self.returncode
