"""``foedus coordinator --config coordinator.yaml``: the federation's long-running service.

It keeps the registry (sites, users, jobs, assignments, round records, events) in
:class:`~foedus.federation.store.Store`, serves the HTTPS API described in
:mod:`foedus.federation.openapi`, and drives every job through its life in :meth:`tick`:

1. ``POST /v1/jobs`` checks the job file, gives it a unique id and a ``checkpoint_dir`` under
   the state dir, assigns each of its topology's *data holders* (clients, peers) to a site
   and *offers* it (state ``queued``);
2. each site reads its offer at once (a site's heartbeat is a long poll: the coordinator
   holds its answer until the site has an offer or a stop, or for one heartbeat period at
   most) and accepts it (and starts its actor) or refuses it with its reason; one refusal
   fails the job with that reason, and so does silence past the job's ``queue_timeout``
   (naming the sites that did not answer);
3. once every site accepted (judged as the last answer arrives), the coordinator starts the
   job's actors that hold no data (the server, edge aggregators) in one process of their own
   (:mod:`foedus.federation.actor`) and records each round as it ends (``running``); a site
   that stops heartbeating meanwhile is an event of the job;
4. the server's result file ends the job (``finished`` or ``failed``), or, for a job whose
   actors all run at sites (a swarm, a vertical job), their exits do, and one of them
   (:meth:`Coordinator.reporter`) sends the job's round records with its site's
   heartbeats; ``cancel`` kills the server and tells the sites to stop the job's actors.

Sites are authenticated by mutual TLS: a site's name is the CN of its client certificate,
checked against the deployment's CA, never a field of the request, so a site cannot act under
another's name. Users are authenticated by bearer tokens (stored hashed) and have a role.

Restart: nothing lives only in memory. A restarted coordinator finds its running jobs in the
database; a server process that survived is adopted (watched by pid and its files), one that
died is started again and resumes from its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from foedus.config.spec import JobSpec
from foedus.config.topology import Topology
from foedus.core.errors import ConfigError, FoedusError, require
from foedus.federation import preflight
from foedus.federation.actor import MODEL_FILE
from foedus.federation.console import mount as mount_console
from foedus.federation.console.sessions import REQUEST_USER
from foedus.federation.database import POSTGRES_SCHEMES
from foedus.federation.openapi import openapi
from foedus.federation.policy import CatalogEntry, fill_data, parse_catalog
from foedus.federation.redact import literal_secrets, redact, scrub
from foedus.federation.reports import SiteReports
from foedus.federation.settings import (
    lock_state_dir,
    path_of,
    read_config,
    tls_of,
    write_private,
)
from foedus.federation.site_state import Adopted, pid_runs, start_time
from foedus.federation.store import ROLES, Job, Store, new_token
from foedus.federation.zygote import SERVER_ACTOR, Zygote
from foedus.runner import prepare
from foedus.transport.tls import TLSConfig, peer_identity

log = logging.getLogger("foedus.federation.coordinator")

__all__ = ["Coordinator", "CoordinatorConfig", "serve"]

VERSION = "0.1.0"
#: what :meth:`Coordinator.check` makes of a job file: the job (a mapping), its spec, its
#: topology and its queue timeout
Checked = tuple[dict[str, Any], JobSpec, Topology, float]
TICK_S = 0.5
#: how long a stopped job process has between SIGTERM and SIGKILL
STOP_GRACE_S = 10.0
#: how long a job waits for its sites' answers unless its file or coordinator.yaml says
DEFAULT_QUEUE_TIMEOUT = 600.0
#: queued jobs whose server process is started (gated) before their sites answer; the jobs
#: queued beyond these start theirs when the sites have accepted (a waiting Python process
#: holds some 100 MB, so a long queue must not hold one each)
PRESTART_MAX = 3
#: the largest request body the API reads (a job file travels in one)
MAX_BODY_BYTES = 4 << 20
#: random bytes of the suffix that makes a job file's ``job_id`` unique (as hex, after a '-')
JOB_SUFFIX_BYTES = 3
#: the longest ``job_id`` a job file may have here: with its suffix it is still a valid job id
#: (at most 101 characters, :func:`foedus.config.spec._job_id`), which its actors check again
MAX_JOB_ID = 101 - 1 - 2 * JOB_SUFFIX_BYTES


def seconds(value: Any, key: str) -> float:
    """A duration setting: a number of seconds > 0, or a one-line error naming the key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{key}: expected seconds > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CoordinatorConfig:
    """``coordinator.yaml`` (docs/federation.md lists every key)."""

    host: str
    port: int
    state_dir: Path
    tls: TLSConfig
    admin_token_file: Path
    heartbeat_timeout: float
    catalog: dict[str, CatalogEntry]
    #: a ``postgresql://`` URL, or None for the SQLite file ``state_dir/coordinator.db``
    database: str | None = None
    #: seconds a job may stay queued before it fails naming the sites that did not answer
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    #: fork the jobs' server processes from a warm process (:mod:`foedus.federation.zygote`)
    warm: bool = True

    @classmethod
    def load(cls, path: str | Path) -> CoordinatorConfig:
        raw = read_config(path, {"listen", "state_dir", "tls", "admin_token_file",
                                 "heartbeat_timeout", "catalog", "database", "queue_timeout",
                                 "warm"},
                          {"state_dir", "tls", "admin_token_file"})
        listen = raw.get("listen") or {}
        if not isinstance(listen, dict) or set(listen) - {"host", "port"}:
            raise ConfigError("listen: expected {host: ADDRESS, port: NUMBER}")
        port = listen.get("port", 8443)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"listen.port: expected a port number, got {port!r}")
        timeout = seconds(raw.get("heartbeat_timeout", 15), "heartbeat_timeout")
        database = raw.get("database")
        if database is not None and (not isinstance(database, str)
                                     or not database.startswith(POSTGRES_SCHEMES)):
            raise ConfigError(f"database: expected a postgresql:// URL, got {database!r} "
                              "(leave the key out for SQLite in state_dir)")
        warm = raw.get("warm", True)
        if not isinstance(warm, bool):
            raise ConfigError(f"warm: expected true or false, got {warm!r}")
        return cls(host=str(listen.get("host", "127.0.0.1")), port=port,
                   state_dir=path_of(raw, raw["state_dir"], "state_dir"),
                   tls=tls_of(raw, identity=True),
                   admin_token_file=path_of(raw, raw["admin_token_file"], "admin_token_file"),
                   heartbeat_timeout=timeout,
                   catalog=parse_catalog(raw.get("catalog")), database=database,
                   queue_timeout=seconds(raw.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT),
                                         "queue_timeout"), warm=warm)


class Refused(Exception):
    """A request the API refuses: an HTTP status and the reason, sent as ``{"error": ...}``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


#: a job's server process, the coordinator's child (cold) or forked by its warm process
ServerProcess = subprocess.Popen[bytes] | Adopted
#: the file in a job's directory naming its server process: ``{"pid": P, "started": TICKS}``
PID_FILE = "server.pid"


def _pid_runs(pid: int, marker: str, where: Path) -> bool:
    """Whether ``pid`` is alive and is the process we started, so a recycled pid is never
    mistaken for our server: it started when ``where``'s pid file says (a process forked by
    the warm process has the zygote's command line), else its command line names
    ``marker``."""
    started: int | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        found = json.loads((where / PID_FILE).read_text())
        if found["pid"] == pid:
            started = int(found["started"])
    return pid_runs(pid, marker, started)


class Coordinator:
    """The service: the store, the job lifecycle (:meth:`tick`) and the aiohttp app."""

    def __init__(self, config: CoordinatorConfig, *,
                 clock: Callable[[], float] = time.time,
                 launch: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
                 warm: bool = False) -> None:
        self.config = config
        self.clock = clock
        self.launch = launch  # how processes start (tests pass a recorder)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.database or config.state_dir / "coordinator.db", clock=clock)
        self._offline: set[tuple[str, str]] = set()  # (job, site) shown offline in its events
        #: when this coordinator started: while it was down no site could reach it, so a
        #: site's silence counts from here, not from its last heartbeat to a previous run
        self.started = clock()
        self._own: dict[str, list[str]] = {}  # job -> its actors that run here (own_actors)
        self._reporters: dict[str, str] = {}  # job -> its actor at a site that reports rounds
        self.servers: dict[str, ServerProcess] = {}
        #: job processes sent SIGTERM, with the time after which they get SIGKILL
        self._stopping: list[tuple[ServerProcess, float]] = []
        self._read: dict[str, int] = {}  # job -> bytes of its records file ingested
        self.reports = SiteReports(config.state_dir / "sites")  # sites' audit logs, ledgers
        self._news = asyncio.Event()  # set (and replaced) when any assignment changes
        self.closing = False  # the service is stopping: held heartbeats answer at once
        self._bootstrap_admin()
        #: the warm process server processes are forked from (:func:`serve`'s coordinator;
        #: until it is ready, or if it died, a server process is a fresh Python)
        self.zygote = Zygote(config.state_dir / "zygote.log") if warm else None

    def _bootstrap_admin(self) -> None:
        """The first admin's token: read from ``admin_token_file``, or created there (mode
        0600) on first start; only its hash enters the database."""
        path = self.config.admin_token_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_token() + "\n")
        token = path.read_text().strip()
        if not token:
            raise ConfigError(f"admin_token_file: {str(path)!r} is empty")
        if self.store.user_by_token(token) is None:
            self.store.add_user("admin", "admin", token)

    # ---- the job lifecycle ---------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.config.state_dir / "jobs" / job_id

    def check(self, job_yaml: str) -> Checked:
        """Everything :meth:`submit` refuses that the job file alone decides. It reads no
        shared state, so the API runs it in a worker thread: a job's first check imports what
        its stages need (dp_accounting takes seconds), which must not hold heartbeats."""
        try:
            job = yaml.safe_load(job_yaml)
        except yaml.YAMLError as exc:  # the line and the problem, as `foedus submit` words it
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
            raise Refused(400, f"job file: not valid YAML{where}: {problem}") from exc
        if not isinstance(job, dict):
            raise Refused(400, "job file: expected a mapping of settings such as rounds, data, "
                               f"model; got {'nothing' if job is None else type(job).__name__}")
        data = job.get("data") or {}
        for key in ("options", "server_options"):
            if isinstance(data, dict) and key in data:
                raise Refused(400, f"data.{key}: a federated job names a data catalog entry in "
                                   "data.dataset; each site's catalog supplies the options")
        if "checkpoint_dir" in job:
            raise Refused(400, "checkpoint_dir: set by the coordinator (under its state dir)")
        queue_timeout = self.config.queue_timeout
        try:  # a federation's key, not the job's: the actors never see it
            if "queue_timeout" in job:
                queue_timeout = seconds(job.pop("queue_timeout"), "queue_timeout")
            spec = JobSpec.from_dict(fill_data(
                job, self.config.catalog, where="at the coordinator (its catalog names the "
                "server's held-out data for each entry a job may use)"))
            topology = prepare(spec)
        except FoedusError as exc:
            raise Refused(400, f"job file: {exc}") from exc
        if len(spec.job_id) > MAX_JOB_ID:  # the id it gets would not be a valid job id
            raise Refused(400, f"job file: job_id: at most {MAX_JOB_ID} characters in a "
                               f"federation (the coordinator appends '-' and "
                               f"{2 * JOB_SUFFIX_BYTES} hex digits, and a job id has at most "
                               f"101), got {len(spec.job_id)}")
        if spec.transport.type == "local":
            raise Refused(400, "transport: 'local' exists only inside one process; a "
                               "federated job needs a networked transport (kafka, mqtt, grpc, "
                               "https)")
        return job, spec, topology, queue_timeout

    def submit(self, owner: str, job_yaml: str, sites: list[str] | None,
               dry_run: bool = False, *, checked: Checked | None = None) -> str:
        """Check a job file and queue it, its data holders offered to sites; the job's id.
        ``checked``: what :meth:`check` made of ``job_yaml``, if it already ran."""
        job, spec, topology, queue_timeout = checked or self.check(job_yaml)
        holders = topology.data_holders(spec)
        count = len(holders)
        known = {s["name"]: s for s in self.store.sites(self.config.heartbeat_timeout)}
        if sites is None:
            sites = [name for name, s in known.items() if s["online"]][:count]
        if len(sites) != count or len(set(sites)) != count:
            raise Refused(409, f"the job has {count} data holders ({topology.name}: "
                               f"{', '.join(holders)}) and needs as many distinct sites; got "
                               f"{sites} (online: {[n for n, s in known.items() if s['online']]})")
        for name in sites:
            if name not in known:
                raise Refused(409, f"no site named {name!r} has ever connected (known: "
                                   f"{', '.join(sorted(known)) or 'none'})")
            if not known[name]["online"]:
                raise Refused(409, f"site {name!r} is offline (no heartbeat for "
                                   f"{self.clock() - known[name]['last_seen']:.0f}s)")
        job_id = f"{spec.job_id}-{secrets.token_hex(JOB_SUFFIX_BYTES)}"
        job["job_id"] = job_id
        actors = dict(zip(holders, sites, strict=True))
        checkpoint_dir = self.job_dir(job_id) / "checkpoints"
        if dry_run:  # every check passed; nothing is queued
            return job_id
        self.store.add_job(job_id, owner, yaml.safe_dump(job, sort_keys=False), actors,
                           str(checkpoint_dir), queue_timeout)
        log.info("job %s submitted by %s, offered to %s", job_id, owner, sites)
        self.notify()  # the sites' held heartbeats carry the offer now
        self._prestart(job_id)
        return job_id

    def _finish(self, job_id: str, state: str, reason: str | None,
                result: dict[str, Any] | None = None) -> bool:
        """End a job (:meth:`Store.finish_job`) and wake the held heartbeats: its sites'
        ``stop`` reaches them now, not at their next beat."""
        ended = self.store.finish_job(job_id, state, reason, result)
        if ended:
            job = self.store.job(job_id)  # the reason can quote a credential of its file
            shown = job.shown().reason if job is not None else reason
            log.info("job %s %s%s", job_id, state, f": {shown}" if shown else "")
            self.notify()
        return ended

    def notify(self) -> None:
        """Wake every heartbeat held open (:meth:`_assignments_when_news`): an assignment
        changed, so the site it belongs to may have an offer or a stop to read."""
        self._news.set()
        self._news = asyncio.Event()

    def _assignments(self, site: str) -> list[dict[str, Any]]:
        """What a heartbeat answers a site: its open assignments, with the job's state, and
        an offer's job file and submitter."""
        out = []
        for a in self.store.assignments(site=site):
            if a["state"] in ("offered", "accepted", "running", "stop"):
                job = self.store.job(a["job_id"])
                out.append({**a, "job_state": job.state if job is not None else None,
                            **({"job_yaml": job.job_yaml, "owner": job.owner}
                               if job is not None and a["state"] == "offered" else {})})
        return out

    async def _assignments_when_news(self, site: str, hold: float) -> list[dict[str, Any]]:
        """A long poll: the site's assignments as soon as one is an offer or a stop, or after
        ``hold`` seconds (the site's heartbeat period) at the latest. An offer so reaches its
        site when it is made, not at the site's next heartbeat (up to ``heartbeat_s`` later,
        most of a small job's time to its first round)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while True:
            news = self._news  # taken before reading: a change from here on wakes the wait
            out = self._assignments(site)
            left = deadline - loop.time()
            if left <= 0 or self.closing or any(a["state"] in ("offered", "stop") for a in out):
                return out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), left)

    def own_actors(self, job: Job) -> list[str]:
        """The actors of ``job`` that hold no data and run here (its server, edge
        aggregators), the leader first; none for a swarm."""
        if job.id not in self._own:
            spec = JobSpec.from_dict(fill_data(yaml.safe_load(job.job_yaml),
                                               self.config.catalog))
            topology = prepare(spec)
            holders = set(topology.data_holders(spec))
            self._own[job.id] = [a for a in topology.actors(spec) if a not in holders]
        return self._own[job.id]

    def cancel(self, job: Job, who: str) -> None:
        if not self._finish(job.id, "cancelled", f"cancelled by {who}"):
            raise Refused(409, f"job {job.id} already ended ({job.state})")
        self._stop_server(job)

    def _stop_server(self, job: Job) -> None:
        proc = self.servers.pop(job.id, None)
        pid = proc.pid if proc is not None else job.server_pid
        if pid is not None and (proc is not None
                                or _pid_runs(pid, job.id, self.job_dir(job.id))):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # its own session: the server and any child
        if proc is not None:  # reaped by tick, SIGKILLed there if it lingers: never waited
            self._stopping.append((proc, time.monotonic() + STOP_GRACE_S))  # here (the API)

    @property
    def stopping(self) -> list[int]:
        """The pids of job processes sent SIGTERM that have not been reaped yet."""
        return [proc.pid for proc, _ in self._stopping]

    def _reap_stopped(self) -> None:
        """Reap the stopped job processes that exited; SIGKILL those past their grace."""
        for entry in list(self._stopping):
            proc, deadline = entry
            if proc.poll() is None and time.monotonic() < deadline:
                continue
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if isinstance(proc, subprocess.Popen):
                    proc.wait()  # our child: reaped at once
                # one forked by the warm process is its child, reaped there (or by init
                # when it is gone): nothing to wait for here, in the API's event loop
            self._stopping.remove(entry)

    def _spawn(self, job: Job, *, gated: bool) -> ServerProcess:
        """The job's actors that hold no data, in one process and session of their own, from
        a job file with the coordinator's data and the job's checkpoint dir (so a restart
        resumes). ``gated``: the process imports and checks everything, then waits for the
        job's ``go`` file (:meth:`_start_server`) before it starts any actor. Forked from the
        warm process when it is ready (no seconds of imports), else a fresh Python; either
        way its pid and start time go to the job's pid file, which tells a restarted
        coordinator that the pid is still its server."""
        where = self.job_dir(job.id)
        where.mkdir(parents=True, exist_ok=True)
        spec = fill_data(yaml.safe_load(job.job_yaml), self.config.catalog)
        spec["checkpoint_dir"] = job.checkpoint_dir
        write_private(where / "server.yaml", yaml.safe_dump(spec, sort_keys=False))
        gate = ["--start-when", str(where / "go"), "--give-up-after",
                f"{max(0.0, (job.queue_deadline or self.clock()) - self.clock()) + 60:.0f}"]
        argv = [str(where / "server.yaml"), "--actors", ",".join(self.own_actors(job)),
                "--records", str(where / "records.jsonl"),
                "--result", str(where / "result.json"), *(gate if gated else [])]
        exit_file = where / "server.exit"
        forked = (self.zygote.fork(argv, where, where / "server.log", exit_file,
                                   main=SERVER_ACTOR) if self.zygote is not None else None)
        proc: ServerProcess
        if forked is not None:
            # not our child: watched through /proc and the exit file the zygote writes
            proc = Adopted(forked, job.id, where / "server.progress", start_time(forked),
                           exit_file)
        else:
            with (where / "server.log").open("ab") as logfile:
                proc = self.launch(
                    [sys.executable, "-m", SERVER_ACTOR, *argv],
                    cwd=where, stdout=logfile, stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ,
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        (where / PID_FILE).write_text(json.dumps({"pid": proc.pid,
                                                  "started": start_time(proc.pid)}))
        self.servers[job.id] = proc
        return proc

    def _prestart(self, job_id: str) -> None:
        """Start a queued job's server process at once, gated: its imports and checks (seconds
        of a cold Python) overlap the sites' answers and their clients' start, instead of
        following them; it trains nothing before every site has accepted."""
        job = self.store.job(job_id)
        if job is None or not self.own_actors(job):
            return
        queued = {j.id for j in self.store.jobs(states=("queued",))}
        if sum(1 for j, p in self.servers.items() if j in queued and p.poll() is None) \
                >= PRESTART_MAX:
            return
        proc = self._spawn(job, gated=True)
        self.store.set_job(job.id, server_pid=proc.pid)

    def _start_server(self, job: Job) -> None:
        """Start the job's actors without data: open the gate of its pre-started process
        (after a coordinator restart too: found by pid), or start one. A job without such
        actors (a swarm) only changes state: its actors all run at sites, and it ends when
        they have."""
        actors = self.own_actors(job)
        if not actors:
            self.store.set_job(job.id, state="running", event="every actor of this job runs at "
                               "a site; it ends when they all have")
            return
        proc = self.servers.get(job.id)
        waiting = (proc.poll() is None if proc is not None
                   else bool(job.server_pid and _pid_runs(job.server_pid, job.id,
                                                          self.job_dir(job.id))))
        if waiting and job.state == "queued":
            (self.job_dir(job.id) / "go").touch()
            pid = proc.pid if proc is not None else job.server_pid
        else:
            pid = self._spawn(job, gated=False).pid
        self.store.set_job(job.id, state="running", server_pid=pid,
                           event=f"{', '.join(actors)} started here (pid {pid})")
        log.info("job %s running: %s started (pid %d)", job.id, ", ".join(actors), pid)

    def _ingest_rounds(self, job: Job) -> None:
        path = self.job_dir(job.id) / "records.jsonl"
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(self._read.get(job.id, 0))
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits
        for line in complete.splitlines():
            self.store.add_round(job.id, json.loads(line))
        self._read[job.id] = self._read.get(job.id, 0) + len(complete)

    def tick(self) -> None:
        """One pass over every job that has not ended: start, watch, end."""
        self._reap_stopped()
        for job in self.store.jobs(states=("queued",)):
            self._tick_queued(job)
        running = self.store.jobs(states=("running",))
        if not running:
            return
        sites = {s["name"]: s for s in self.store.sites(self.config.heartbeat_timeout)}
        for job in running:
            self._watch_sites(job, sites)
            if self.own_actors(job):
                self._tick_server(job)
            else:
                self._tick_sites_only(job)

    def _tick_queued(self, job: Job) -> None:
        """Start a job every site accepted; fail one a site refused, or one whose sites did
        not all answer before its queue deadline (naming them)."""
        answers = self.store.assignments(job_id=job.id)
        refused = [a for a in answers if a["state"] == "refused"]
        if refused:
            a = refused[0]
            self._finish(job.id, "failed",
                         f"site {a['site']} refused {a['actor']}: {a['reason']}")
            self._stop_server(job)  # the pre-started one
        elif all(a["state"] in ("accepted", "running") for a in answers):
            self._start_server(job)
        elif job.queue_deadline is not None and self.clock() >= job.queue_deadline:
            silent = sorted({a["site"] for a in answers if a["state"] == "offered"})
            self._finish(
                job.id, "failed", f"queued for {job.queue_deadline - job.created:g}s "
                f"(queue_timeout) without an answer from {', '.join(silent)}")
            self._stop_server(job)

    def _watch_sites(self, job: Job, sites: dict[str, dict[str, Any]]) -> None:
        """A site of a running job that stops heartbeating (longer than heartbeat_timeout)
        is an event of the job, and so is its return: the submitter sees why rounds miss it.
        Not in this coordinator's first heartbeat_timeout: the sites were silent because it
        was down (restarted), which is no news about them."""
        for name in job.sites:
            site = sites.get(name)
            key = (job.id, name)
            if site is None:
                continue
            if not site["online"] and key not in self._offline and \
                    self.clock() - self.started > self.config.heartbeat_timeout:
                self._offline.add(key)
                self.store.add_event(job.id, f"site {name} offline: no heartbeat for "
                                     f"{self.clock() - site['last_seen']:.0f}s")
            elif site["online"] and key in self._offline:
                self._offline.discard(key)
                self.store.add_event(job.id, f"site {name} back online")

    def _tick_sites_only(self, job: Job) -> None:
        """A job whose actors all run at sites ends with them: failed with the first failure,
        finished when every one exited cleanly."""
        answers = self.store.assignments(job_id=job.id)
        failed = [a for a in answers if a["state"] == "failed"]
        if failed:
            a = failed[0]
            self._finish(job.id, "failed", f"{a['actor']} at site {a['site']} "
                         f"failed: {a['reason']}")
        elif all(a["state"] == "done" for a in answers):
            self._finish(job.id, "finished", None,
                         {"actors": [a["actor"] for a in answers]})

    def _tick_server(self, job: Job) -> None:
        """Read the rounds the job's server process recorded, and end the job with its
        result; restart a server that is gone without one (it resumes from its checkpoint).
        A job whose data holders have all failed (a site's data missing, its job file
        refused by the actor) fails at once, naming the first: its server would otherwise
        wait out each round's timeout for clients that are gone."""
        self._ingest_rounds(job)
        result_path = self.job_dir(job.id) / "result.json"
        proc = self.servers.get(job.id)
        answers = self.store.assignments(job_id=job.id)
        if not result_path.exists() and answers and \
                all(a["state"] == "failed" for a in answers):
            # no data holder is left: the server would wait out every round's timeout
            a = answers[0]
            self._finish(job.id, "failed", f"every site's actor failed; {a['actor']} at site "
                         f"{a['site']}: {a['reason']}")
            self._stop_server(job)
            return
        if result_path.exists():
            result = json.loads(result_path.read_text())
            self._ingest_rounds(job)
            if result["status"] == 0:
                self._finish(job.id, "finished", None, result.get("summary"))
            elif result["status"] == 2:  # the job, as the coordinator's data fills it, is wrong
                self._finish(job.id, "failed", "the job's server at the coordinator could not "
                             f"start: {result.get('error')}", result.get("summary"))
            else:
                self._finish(job.id, "failed", result.get("error"),
                             result.get("summary"))
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # it ends as it writes
                    proc.wait(timeout=30)  # the result; one that lingers is left to end
                self.servers.pop(job.id, None)
        elif proc is not None and proc.poll() is not None:
            self.servers.pop(job.id, None)
            self._finish(job.id, "failed", f"the server process exited with "
                         f"status {proc.returncode} (see {job.id}/server.log)")
        elif proc is None and not (job.server_pid and _pid_runs(job.server_pid, job.id,
                                                                self.job_dir(job.id))):
            log.warning("job %s: its server is gone; restarting it from its checkpoint",
                        job.id)
            self._start_server(job)

    def stop_all(self) -> None:
        """Leave server processes running when the coordinator stops: a restarted coordinator
        adopts them, and a job does not die with its coordinator (the warm process stops;
        the processes it forked live on)."""
        if self.zygote is not None:
            self.zygote.close()
        self.store.close()

    # ---- the HTTP API --------------------------------------------------------------------

    def _user(self, request: Any, role: str) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        # a console session's (user, role), set by the console's middleware (console.routes)
        found: tuple[str, str] | None = request.get(REQUEST_USER)
        if found is None and not header.startswith("Bearer "):
            raise Refused(401, "no bearer token (Authorization: Bearer TOKEN)")
        found = found or self.store.user_by_token(header[len("Bearer "):].strip())
        if found is None:
            raise Refused(401, "unknown token")
        if ROLES.index(found[1]) < ROLES.index(role):
            raise Refused(403, f"user {found[0]!r} is a {found[1]}; this needs the {role} role")
        return found

    def _site(self, request: Any) -> str:
        name = peer_identity(request.transport.get_extra_info("ssl_object"))
        if name is None:
            raise Refused(401, "site endpoints need a client certificate signed by the "
                               "federation's CA")
        return name

    def _job(self, request: Any) -> Job:
        job = self.store.job(request.match_info["job_id"])
        if job is None:
            raise Refused(404, f"no job {request.match_info['job_id']!r}")
        return job

    @staticmethod
    async def _body(request: Any) -> dict[str, Any]:
        web = require("aiohttp.web", "federation")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, "the request body is not JSON") from exc
        except web.HTTPRequestEntityTooLarge as exc:  # aiohttp's answer is plain text
            raise Refused(413, f"the request is larger than the coordinator takes "
                               f"({MAX_BODY_BYTES >> 20} MiB)") from exc
        if not isinstance(body, dict):
            raise Refused(400, "the request body must be a JSON object")
        return body

    def app(self) -> Any:
        web = require("aiohttp.web", "federation")
        routes: list[tuple[str, str, Callable[[Any], Awaitable[Any]]]] = []

        def route(method: str, path: str) -> Callable[[Callable[[Any], Awaitable[Any]]],
                                                      Callable[[Any], Awaitable[Any]]]:
            def add(handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
                async def wrapped(request: Any) -> Any:
                    try:
                        answer = await handler(request)
                        return answer if isinstance(answer, web.StreamResponse) \
                            else web.json_response(answer)
                    except Refused as exc:
                        return web.json_response({"error": str(exc)}, status=exc.status)
                routes.append((method, path, wrapped))
                return handler
            return add

        @route("GET", "/openapi.json")
        async def spec(request: Any) -> Any:
            return openapi(VERSION)

        @route("GET", "/v1/health")
        async def health(request: Any) -> Any:
            return {"ok": True, "version": VERSION}

        @route("POST", "/v1/users")
        async def add_user(request: Any) -> Any:
            self._user(request, "admin")
            body = await self._body(request)
            name, role = body.get("name"), body.get("role")
            if not isinstance(name, str) or not name:
                raise Refused(400, "name: required")
            if role not in ROLES:
                raise Refused(400, f"role: got {role!r}; allowed: {', '.join(ROLES)}")
            # re-keying invalidates the user's token: only when asked for, never by a name
            # that happened to be taken
            before = self.store.user_role(name)
            if before is not None and body.get("replace") is not True:
                raise Refused(409, f"user {name!r} exists (a {before}); re-keying them (a new "
                                   "token, the old one stops working) needs replace "
                                   f"(`foedus users add {name} --role {role} --replace`)")
            token = new_token()
            self.store.add_user(name, role, token)
            return {"name": name, "role": role, "token": token,
                    "replaced": None if before is None else {"role": before}}

        @route("GET", "/v1/sites")
        async def sites(request: Any) -> Any:
            self._user(request, "viewer")
            return {"sites": self.store.sites(self.config.heartbeat_timeout)}

        @route("GET", "/v1/sites/{name}/audit")
        async def site_audit(request: Any) -> Any:
            self._user(request, "admin")
            return self.reports.audit(request.match_info["name"])

        @route("GET", "/v1/sites/{name}/ledger")
        async def site_ledger(request: Any) -> Any:
            self._user(request, "admin")
            ledger = self.reports.ledger(request.match_info["name"])
            if ledger is None:
                raise Refused(404, f"site {request.match_info['name']!r} has sent no ledger")
            return {"site": request.match_info["name"], "datasets": ledger}

        @route("POST", "/v1/jobs")
        async def submit(request: Any) -> Any:
            user, _ = self._user(request, "submitter")
            body = await self._body(request)
            job_yaml, sites = body.get("job_yaml"), body.get("sites")
            if not isinstance(job_yaml, str):
                raise Refused(400, "job_yaml: required (the job file's text)")
            if sites is not None and (not isinstance(sites, list)
                                      or not all(isinstance(s, str) for s in sites)):
                raise Refused(400, "sites: expected a list of site names")
            checked = await asyncio.to_thread(self.check, job_yaml)
            literal = literal_secrets(job_yaml)  # accepted, but the submitter is told
            warnings = {"warnings": [literal]} if literal else {}
            if request.query.get("dry_run") in ("1", "true"):  # check only, queue nothing
                self.submit(user, job_yaml, sites, dry_run=True, checked=checked)
                return {**await asyncio.to_thread(  # it may compose privacy charges
                    preflight.dry_run, yaml.safe_load(job_yaml),
                    self.store.sites(self.config.heartbeat_timeout), self.store.assignments(),
                    checked[1], self.reports.ledger), **warnings}
            return {"id": self.submit(user, job_yaml, sites, checked=checked), **warnings}

        @route("GET", "/v1/jobs")
        async def jobs(request: Any) -> Any:
            self._user(request, "viewer")
            return {"jobs": [self._view(j) for j in self.store.jobs()]}

        @route("GET", "/v1/jobs/{job_id}")
        async def job(request: Any) -> Any:
            self._user(request, "viewer")
            found = self._job(request)
            return {**self._view(found), "events": scrub(self.store.events(found.id),
                                                         redact(found.job_yaml).values)}

        @route("GET", "/v1/jobs/{job_id}/rounds")
        async def rounds(request: Any) -> Any:
            self._user(request, "viewer")
            found = self._job(request)
            return {"rounds": scrub(self.store.rounds(found.id), redact(found.job_yaml).values)}

        @route("GET", "/v1/jobs/{job_id}/model")
        async def model(request: Any) -> Any:
            self._user(request, "viewer")
            found = self._job(request)
            if found.state != "finished":
                raise Refused(409, f"job {found.id} is {found.state}"
                                   + (f" ({found.reason})" if found.reason else "")
                                   + "; only a finished job has a final model")
            path = self.job_dir(found.id) / MODEL_FILE
            if not path.exists():
                raise Refused(404, f"job {found.id} finished without a model file")
            return web.Response(body=path.read_bytes(), content_type="application/octet-stream",
                                headers={"Content-Disposition":
                                         f'attachment; filename="{found.id}.foedus"'})

        @route("POST", "/v1/jobs/{job_id}/cancel")
        async def cancel(request: Any) -> Any:
            user, role = self._user(request, "submitter")
            found = self._job(request)
            if role != "admin" and found.owner != user:
                raise Refused(403, f"job {found.id} belongs to {found.owner!r}; only its owner "
                                   "or an admin may cancel it")
            self.cancel(found, user)
            return {"id": found.id, "state": "cancelled"}

        @route("POST", "/v1/site/heartbeat")
        async def heartbeat(request: Any) -> Any:
            site = self._site(request)
            body = await self._body(request)
            offers = body.get("offers") if isinstance(body.get("offers"), dict) else {}
            self.store.heartbeat(site, str(body.get("version", "?")), offers or {})
            self.site_rounds(site, body.get("rounds"))
            for actor in body.get("actors") or []:
                self._actor_state(site, actor)
            received = self.reports.receive(site, body)
            wait = body.get("wait", 0)
            hold = (min(float(wait), self.config.heartbeat_timeout / 3)
                    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0
                    else 0.0)
            return {"assignments": await self._assignments_when_news(site, hold), **received}

        @route("POST", "/v1/site/answer")
        async def answer(request: Any) -> Any:
            site = self._site(request)
            body = await self._body(request)
            accept = body.get("accept") is True
            reason = body.get("reason") if not accept else None
            if not accept and not isinstance(reason, str):
                raise Refused(400, "reason: a refusal names its reason")
            if not self.store.set_assignment(str(body.get("job_id")), site,
                                             str(body.get("actor")),
                                             "accepted" if accept else "refused", reason,
                                             only_from=("offered",)):
                raise Refused(404, f"no open offer of {body.get('actor')} of job "
                                   f"{body.get('job_id')} to site {site}")
            job = self.store.job(str(body.get("job_id")))
            if job is not None and job.state == "queued":  # the last acceptance opens the
                self._tick_queued(job)  # server's gate now, a refusal fails the job now
            return {"ok": True}

        app = web.Application(client_max_size=MAX_BODY_BYTES)
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        mount_console(app, self)  # the web console, /console/ (docs/console.md)
        return app

    def _view(self, job: Job) -> dict[str, Any]:
        """A job as the API shows it: no credential of its file anywhere (docs/security.md)."""
        hidden = redact(job.job_yaml).values
        return {**job.public(),
                "assignments": scrub(self.store.assignments(job_id=job.id), hidden),
                "rounds_done": len(self.store.rounds(job.id))}

    def reporter(self, job: Job) -> str | None:
        """The actor at a site whose round records are the job's, for a job with no actor
        here (None otherwise: the server's process records them): a vertical job's label
        party, a swarm's first peer (each peer folds the rounds it saw; one peer's view is
        the job's, as ``foedus run`` shows the first peer's)."""
        if self.own_actors(job):
            return None
        if job.id not in self._reporters:
            spec = JobSpec.from_dict(fill_data(yaml.safe_load(job.job_yaml),
                                               self.config.catalog))
            self._reporters[job.id] = prepare(spec).round_reporter(spec)
        return self._reporters[job.id]

    def site_rounds(self, site: str, reports: Any) -> None:
        """Round records a site's heartbeat carries, ``[{"job_id", "actor", "records"}]``:
        kept for a job with no actor here, from its :meth:`reporter` only, and only when
        that actor is assigned to this site (a site speaks for its own actors). A record
        sent again (after a lost heartbeat or a site restart) replaces the same round's."""
        if not isinstance(reports, list):
            return
        for report in reports:
            if not isinstance(report, dict) or not isinstance(report.get("records"), list):
                continue
            job = self.store.job(str(report.get("job_id")))
            if job is None or report.get("actor") != self.reporter(job):
                continue
            if not any(a["site"] == site and a["actor"] == report["actor"]
                       for a in self.store.assignments(job_id=job.id)):
                continue
            for record in report["records"]:
                if isinstance(record, dict) and isinstance(record.get("round"), int):
                    self.store.add_round(job.id, record)

    def _actor_state(self, site: str, actor: dict[str, Any]) -> None:
        """A site's report on one of its actors: running, exited (status 0), failed."""
        job_id, name, state = actor.get("job_id"), actor.get("actor"), actor.get("state")
        if not isinstance(job_id, str) or not isinstance(name, str):
            return
        if state == "running":
            self.store.set_assignment(job_id, site, name, "running", only_from=("accepted",))
        elif state in ("exited", "failed"):
            final = "done" if state == "exited" else "failed"
            if self.store.set_assignment(job_id, site, name, final, actor.get("reason"),
                                         only_from=("accepted", "running")):
                return
            self.store.set_assignment(job_id, site, name, "stopped", actor.get("reason"),
                                      only_from=("stop",))


async def serve(config: CoordinatorConfig, ready: Callable[[str], None] | None = None) -> None:
    """Run the coordinator until cancelled (SIGINT/SIGTERM); its state_dir held for it
    (:func:`~foedus.federation.settings.lock_state_dir`): a second coordinator on it is
    refused."""
    web = require("aiohttp.web", "federation")
    held = lock_state_dir(config.state_dir, "coordinator")  # one service per state dir
    try:
        await _serve(config, web, ready)
    finally:
        held.close()


async def _serve(config: CoordinatorConfig, web: Any,
                 ready: Callable[[str], None] | None) -> None:
    coordinator = Coordinator(config, warm=config.warm)
    runner = web.AppRunner(coordinator.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port,
                       ssl_context=config.tls.server_context())
    try:
        await site.start()
    except OSError as exc:  # the port is taken, the host is not this machine's, ...
        await runner.cleanup()
        coordinator.stop_all()
        raise ConfigError(f"listen: cannot listen on {config.host}:{config.port}: "
                          f"{os.strerror(exc.errno) if exc.errno else exc}"
                          + (" (another coordinator, or another service, has it)"
                             if exc.errno == errno.EADDRINUSE else "")) from exc
    port = runner.addresses[0][1]
    url = f"https://{config.host}:{port}"
    (config.state_dir / "url").write_text(url + "\n")
    if ready is not None:
        ready(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                coordinator.tick()
            except Exception:  # one job's bad state must not stop the service
                log.exception("coordinator tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
    finally:
        coordinator.closing = True
        coordinator.notify()  # held heartbeats answer now: the shutdown does not wait for them
        await runner.cleanup()
        coordinator.stop_all()
