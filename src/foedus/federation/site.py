"""``foedus site --config site.yaml``: the agent an organisation runs, next to its data.

It only ever connects *out*, to the coordinator, over HTTPS with its own client certificate
(its identity). Every ``heartbeat_s`` it reports itself and the state of its actors, and reads
its assignments back:

* an ``offered`` actor is checked against the site's **local policy** and its **data
  catalog** (:mod:`foedus.federation.policy`) *here*, whatever the coordinator decided, and,
  on a catalog entry with a privacy budget, against the **ledger**
  (:mod:`foedus.federation.ledger`), which reserves what the job will spend; the site answers
  with acceptance or its reason for refusing; an accepted actor is started at once as
  ``python -m foedus.federation.site_actor JOB client-00N`` (``foedus actor`` plus a record of
  the updates it sent) in its own process and session, from the job file with the catalog's
  data filled in, so a crashing job never takes the agent down and several jobs run side by
  side;
* a ``stop`` (the job was cancelled, failed or ended) stops the actor's process group;
* an actor that exits is reaped and reported (``exited`` or ``failed`` with its log's last
  line), and its job's reservation in the ledger is settled to what it spent.

Every offer and every end is appended to the site's **audit log**
(:mod:`foedus.federation.audit`), whose new entries, and the ledger's state, travel with the
heartbeats so the coordinator can show them to admins. A site killed and restarted **rejoins**
its jobs (:mod:`foedus.federation.site_state`): it adopts the actor processes that survived
and starts again those that did not, once the coordinator says their job is still on.

The loop is deliberately synchronous and simple: each heartbeat is a long poll (the
coordinator answers as soon as there is an offer or a stop for this site, after
``heartbeat_s`` otherwise), a timer fills what is left of the period, and nothing it does
takes long (starting a process does not wait for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from foedus.core.errors import ConfigError, FoedusError, require
from foedus.federation.audit import AuditLog
from foedus.federation.ledger import Charge, Ledger, epsilon_of, mechanisms_of, settled
from foedus.federation.policy import CatalogEntry, Policy, check_policy, fill_data, parse_catalog
from foedus.federation.reports import AUDIT_BATCH
from foedus.federation.settings import (
    SITE_KEYS,
    lock_state_dir,
    path_of,
    read_config,
    tls_of,
    write_private,
)
from foedus.federation.site_actor import sent_upper
from foedus.federation.site_state import ActorRecord, Adopted, pid_runs, start_time, unfinished
from foedus.federation.zygote import Zygote
from foedus.transport.tls import TLSConfig

log = logging.getLogger("foedus.federation.site")

__all__ = ["CoordinatorUnavailable", "Offer", "Site", "SiteConfig", "check_offer", "run_site"]

VERSION = "0.1.0"
#: how long stopped actors get to end after SIGTERM before SIGKILL (each ends by itself within
#: site_actor.STOP_GRACE_S; this is for one that does not)
STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class SiteConfig:
    """``site.yaml`` (docs/federation.md lists every key)."""

    coordinator: str
    state_dir: Path
    tls: TLSConfig
    heartbeat_s: float
    catalog: dict[str, CatalogEntry]
    policy: Policy
    #: fork actors from a warm process that has imported what they need (``warm: false``:
    #: each actor is a fresh Python, some 100 MB less held while no job runs)
    warm: bool = True

    @classmethod
    def load(cls, path: str | Path) -> SiteConfig:
        raw = read_config(path, SITE_KEYS, {"coordinator", "state_dir", "tls"})
        warm = raw.get("warm", True)
        if not isinstance(warm, bool):
            raise ConfigError(f"warm: expected true or false, got {warm!r}")
        url = raw["coordinator"]
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ConfigError(f"coordinator: expected an https:// URL, got {url!r}")
        beat = raw.get("heartbeat_s", 2)
        if isinstance(beat, bool) or not isinstance(beat, int | float) or beat <= 0:
            raise ConfigError(f"heartbeat_s: expected seconds > 0, got {beat!r}")
        return cls(coordinator=url.rstrip("/"),
                   state_dir=path_of(raw, raw["state_dir"], "state_dir"),
                   tls=tls_of(raw, identity=True), heartbeat_s=float(beat),
                   catalog=parse_catalog(raw.get("catalog"), budgets=True),
                   policy=Policy.from_dict(raw.get("policy")), warm=warm)


class CoordinatorUnavailable(FoedusError):
    """The coordinator answered, but not as its API does (a 5xx, a proxy's error page): its
    trouble, which the agent retries like an unreachable coordinator, never the site's
    mistake."""


@dataclass
class Actor:
    job_id: str
    actor: str
    proc: subprocess.Popen[bytes] | Adopted
    log: Path
    reported: dict[str, Any] = field(default_factory=dict)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


@dataclass
class Offer:
    """A site's decision on an offer: ``reason`` None when accepted; ``job`` the job file
    (with the catalog's data filled in when accepted); the catalog entry, the job's planned
    charge (None without DP) and the epsilon it requests at ``delta`` (the budget's, else
    the job's own)."""

    reason: str | None
    job: dict[str, Any]
    dataset: str | None = None
    charge: Charge | None = None
    epsilon: float | None = None
    delta: float | None = None


def check_offer(job_id: str, job: dict[str, Any], config: SiteConfig, ledger: Ledger, *,
                running: int) -> Offer:
    """This site's decision on ``job``: its policy, its catalog and, on a catalog entry with
    a budget, the ledger, which reserves the job's planned spend when it accepts.
    ``running``: the jobs running here now."""
    name = str((job.get("data") or {}).get("dataset", "digits"))
    reason = check_policy(job, config.policy, running)
    if reason is not None:
        return Offer(reason, job, name)
    filled = fill_data(job, config.catalog)
    budget = config.catalog[name].budget
    rounds = job.get("rounds", 10)
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        return Offer(f"rounds: expected an integer, got {rounds!r}", job, name)
    mechanisms = mechanisms_of(filled)
    charge = Charge.planned(mechanisms, rounds) if mechanisms else None
    delta = budget.delta if budget is not None else min((m.delta for m in mechanisms),
                                                        default=None)
    epsilon = epsilon_of([charge], delta) if charge is not None and delta else None
    offer = Offer(None, filled, name, charge, epsilon, delta)
    if budget is None:
        return offer
    if charge is None:
        if config.policy.allow_non_dp:
            return offer
        offer.reason = (f"dataset {name!r} has a lifetime privacy budget (epsilon "
                        f"{budget.epsilon:g} at delta {budget.delta:g}) and this job has no DP "
                        "stage (local-dp or central-dp) whose spend could be counted; this "
                        "site's policy does not allow non-DP jobs on it (policy.allow_non_dp)")
        return offer
    offer.reason, _ = ledger.reserve(name, budget, job_id, mechanisms, rounds)
    return offer


class Site:
    """The agent's state: its running actors and its client to the coordinator."""

    def __init__(self, config: SiteConfig, *, warm: bool = False) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        httpx = require("httpx", "federation")
        self.http = httpx.Client(base_url=config.coordinator, verify=config.tls.client_context(),
                                 timeout=10.0 + config.heartbeat_s)  # + a held heartbeat
        self.actors: dict[tuple[str, str], Actor] = {}
        self.ledger = Ledger(config.state_dir / "ledger.db")
        self.audit = AuditLog(config.state_dir / "audit.jsonl")
        self.audit_have: int | None = None  # audit entries the coordinator holds
        self._ledger_sent = -1  # the ledger's changes the coordinator has a report of
        self._ledger_sending = -1
        self.records: dict[tuple[str, str], ActorRecord] = {}
        #: per actor, how much of its round-records file the coordinator has (in memory: a
        #: restarted site sends them again, and the coordinator keeps each round once)
        self.rounds_read: dict[tuple[str, str], int] = {}
        #: actors of an earlier run of this site whose process is gone: started again, or
        #: reported, once the first heartbeat says whether their job is still on
        self.pending: dict[tuple[str, str], ActorRecord] = {}
        for record in unfinished(config.state_dir):
            key = (record.job_id, record.actor)
            self.records[key] = record
            if record.pid is not None and pid_runs(record.pid, f"/{record.job_id}/",
                                                   record.started):
                self.actors[key] = Actor(record.job_id, record.actor, Adopted(
                    record.pid, f"/{record.job_id}/", self._progress(*key), record.started,
                    self._exit_file(*key)), self._log(*key))
                self.rounds_read[key] = 0
                log.info("adopted %s of job %s (pid %d)", record.actor, record.job_id,
                         record.pid)
            else:
                self.pending[key] = record
        self.finished: list[dict[str, Any]] = []  # reports of ended actors not yet delivered
        #: the warm process actors are forked from; only a site agent of its own
        #: (:func:`run_site`) starts one: sites run as threads of one process (the demo's)
        #: start each actor cold, as the demo's job is submitted before one would be ready
        self.zygote = Zygote(config.state_dir / "zygote.log") if warm else None

    def close(self) -> None:
        """Stop every actor started here (the agent is going away) and the client."""
        self._stop(*self.actors.values())
        if self.zygote is not None:
            self.zygote.close()
        self.http.close()
        self.ledger.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the coordinator; its refusal (4xx with a reason) is a ``ConfigError``,
        an answer that is not its API's (5xx, no JSON) is :class:`CoordinatorUnavailable`."""
        response = self.http.post(path, json=body)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 500 or not isinstance(data, dict) or \
                (response.status_code != 200 and "error" not in data):
            raise CoordinatorUnavailable(f"the coordinator answered {response.status_code} "
                                         f"to {path} without its API's reason")
        if response.status_code != 200:
            raise ConfigError(f"the coordinator refused {path}: {data['error']}")
        return data

    def _answer(self, job_id: str, actor: str, reason: str | None) -> bool:
        """Tell the coordinator this site's decision on an offer; False when it no longer
        takes it: the offer was withdrawn meanwhile (another site's refusal failed the job,
        or it was cancelled or timed out), which is the job's news, not the site's fault."""
        body: dict[str, Any] = {"job_id": job_id, "actor": actor, "accept": reason is None}
        if reason is not None:
            body["reason"] = reason
        try:
            self._post("/v1/site/answer", body)
        except ConfigError as exc:
            log.warning("%s of job %s: the answer was not taken: %s", actor, job_id, exc)
            return False
        return True

    def beat(self) -> bool:
        """One heartbeat: report, read the assignments, act on them. The coordinator holds
        the answer open for up to ``heartbeat_s`` until there is an offer or a stop for this
        site (not on the first beat after a restart: the actors to rejoin wait for its
        answer). True when the answer carried an offer or a stop."""
        self._reap()
        reports = [{"job_id": a.job_id, "actor": a.actor, "state": "running"}
                   for a in self.actors.values()] + self.finished
        offers = {"catalog": sorted(self.config.catalog), "version": VERSION,
                  "policy": self.config.policy.as_dict()}  # shown to users, read by dry runs
        rounds = self._new_rounds()
        answer = self._post("/v1/site/heartbeat",
                            {"version": VERSION, "offers": offers, "actors": reports,
                             "rounds": [{k: v for k, v in r.items() if k != "upto"}
                                        for r in rounds],
                             "wait": 0 if self.pending else self.config.heartbeat_s,
                             **self._reports()})
        self.finished = []
        for r in rounds:  # delivered: never sent again (a lost heartbeat sends them again)
            self.rounds_read[(r["job_id"], r["actor"])] = r["upto"]
        self._delivered(answer)
        self._rejoin(answer.get("assignments", []))
        stops = [(a["job_id"], a["actor"]) for a in answer.get("assignments", [])
                 if a["state"] == "stop"]
        self._stop(*(self.actors.pop(key) for key in stops if key in self.actors))
        for key in stops:
            # also for an actor never started here (the job ended before this site's
            # answer): the report is what lets the coordinator mark the assignment stopped
            self.finished.append({"job_id": key[0], "actor": key[1], "state": "exited",
                                  "reason": "stopped at the coordinator's request"})
        try:
            for a in answer.get("assignments", []):
                key = (a["job_id"], a["actor"])
                if a["state"] == "offered" and key not in self.actors:
                    self._offer(a)
                elif a["state"] == "accepted" and key in self.records and \
                        key not in self.actors and a.get("job_state") in ("queued", "running"):
                    # the coordinator took this site's acceptance, but its answer to it was
                    # lost (the connection broke): the actor was never started; start it now
                    log.warning("job %s: the acceptance of %s was taken; starting it", *key)
                    self._start(self.records[key])
        finally:  # also when an answer failed half-way: stopped here, settle what they spent
            for report in self.finished:
                self._ended(report)
        return any(a["state"] in ("offered", "stop") for a in answer.get("assignments", []))

    def _offer(self, a: dict[str, Any]) -> None:
        job_id, actor = a["job_id"], a["actor"]
        try:
            job = yaml.safe_load(a["job_yaml"])
            if not isinstance(job, dict):
                raise ConfigError("job file: expected a mapping")
            offer = check_offer(job_id, job, self.config, self.ledger,
                                running=len({j for j, _ in self.actors}))
            reason, job = offer.reason, offer.job
        except (FoedusError, yaml.YAMLError, TypeError, AttributeError, ValueError) as exc:
            reason, offer = str(exc), Offer(str(exc), {})
        stages = [str(p.get("type") if isinstance(p, dict) else p)
                  for p in (job.get("pipeline") or [] if isinstance(job, dict) else [])]
        self.audit.offered(job_id=job_id, actor=actor, submitter=a.get("owner"),
                           job_yaml=str(a.get("job_yaml", "")), reason=reason, stages=stages,
                           dataset=offer.dataset, epsilon=offer.epsilon, delta=offer.delta)
        if reason is None:  # recorded before the answer: a site killed from here, or whose
            # answer's reply is lost, finds the record and the job file to start it from
            record = ActorRecord(job_id, actor, None, offer.dataset, a.get("owner"),
                                 offer.charge.to_json() if offer.charge else None, offer.delta)
            record.save(self.config.state_dir)
            write_private(self.config.state_dir / "jobs" / job_id / "job.yaml",
                          yaml.safe_dump(job, sort_keys=False))
            self.records[(job_id, actor)] = record
        if reason is not None:
            log.warning("refusing %s of job %s: %s", actor, job_id, reason)
            self._answer(job_id, actor, reason)
            return
        if not self._answer(job_id, actor, None):  # withdrawn meanwhile: never started
            self._withdrawn(job_id, actor)
            return
        self._start(self.records[(job_id, actor)])

    def _withdrawn(self, job_id: str, actor: str) -> None:
        """An accepted offer the coordinator no longer took (the job ended first): nothing
        was started, so its reservation is released, not kept, and its record ended."""
        reason = "the offer was withdrawn before this site's answer reached the coordinator"
        self.ledger.release(job_id, reason)
        record = self.records.pop((job_id, actor), None) or ActorRecord(job_id, actor)
        self.audit.ended(job_id=job_id, actor=actor, outcome="stopped", reason=reason,
                         updates_sent=0, epsilon=0.0 if record.charge is not None else None)
        record.ended = True
        record.save(self.config.state_dir)

    def _log(self, job_id: str, actor: str) -> Path:
        return self.config.state_dir / "jobs" / job_id / f"{actor}.log"

    def _records(self, job_id: str, actor: str) -> Path:
        return self.config.state_dir / "jobs" / job_id / f"{actor}.rounds.jsonl"

    def _new_rounds(self) -> list[dict[str, Any]]:
        """The round records the actors here wrote since the last delivered heartbeat (a
        swarm's, a vertical job's: the coordinator keeps one actor's of each job), as
        ``{"job_id", "actor", "records", "upto"}``; ``upto``: the file offset they end at."""
        out = []
        for key, offset in list(self.rounds_read.items()):
            try:
                with self._records(*key).open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(1 << 20)
            except FileNotFoundError:
                chunk = b""
            complete = chunk[:chunk.rfind(b"\n") + 1]  # a line being written waits
            if complete:
                out.append({"job_id": key[0], "actor": key[1],
                            "records": [json.loads(ln) for ln in complete.splitlines()],
                            "upto": offset + len(complete)})
            elif key not in self.actors:  # ended and every record delivered
                del self.rounds_read[key]
        return out

    def _exit_file(self, job_id: str, actor: str) -> Path:
        return self.config.state_dir / "jobs" / job_id / f"{actor}.exit"

    def _start(self, record: ActorRecord) -> None:
        """Start (or start again) an actor's process and record its pid and start time:
        forked from the warm zygote when it is ready, else a fresh Python."""
        key = (record.job_id, record.actor)
        where = self.config.state_dir / "jobs" / record.job_id
        logfile = self._log(*key)
        argv = [str(where / "job.yaml"), record.actor, "--progress", str(self._progress(*key)),
                "--records", str(self._records(*key))]
        self.rounds_read.setdefault(key, 0)
        pid = self.zygote.fork(argv, where, logfile, self._exit_file(*key)) \
            if self.zygote is not None else None
        proc: subprocess.Popen[bytes] | Adopted
        if pid is not None:
            record.started = start_time(pid)
            proc = Adopted(pid, f"/{record.job_id}/", self._progress(*key), record.started,
                           self._exit_file(*key))
        else:
            with logfile.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "foedus.federation.site_actor", *argv],
                    cwd=where, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ,
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            record.started = start_time(proc.pid)
        record.pid = proc.pid
        record.save(self.config.state_dir)
        self.actors[key] = Actor(record.job_id, record.actor, proc, logfile)
        log.info("started %s of job %s (pid %d%s)", record.actor, record.job_id, proc.pid,
                 ", forked warm" if pid is not None else "")

    def _rejoin(self, assignments: list[dict[str, Any]]) -> None:
        """Once, after a restart: start again the actors whose process is gone if their job
        is still on; report the others as failed (a stop or an offer is handled as usual)."""
        listed = {(a["job_id"], a["actor"]): a for a in assignments}
        for key, record in list(self.pending.items()):
            a = listed.get(key, {})
            if a.get("state") in ("stop", "offered"):
                continue
            if a.get("state") in ("accepted", "running") and \
                    a.get("job_state") in ("queued", "running"):
                log.warning("rejoining job %s: starting %s again", *key)
                self._start(record)
            else:
                report = {"job_id": key[0], "actor": key[1], "state": "failed",
                          "reason": "its process was gone when the site restarted, and the "
                                    "job is no longer running"}
                self.finished.append(report)
                self._ended(report)
        self.pending = {}

    def _reports(self) -> dict[str, Any]:
        """What a heartbeat carries besides the actors: audit entries the coordinator lacks
        and the ledger when it changed."""
        out: dict[str, Any] = {}
        if self.audit_have is not None:
            out["audit"] = self.audit.entries(since=self.audit_have)[:AUDIT_BATCH]
        self._ledger_sending = self.ledger.changes
        if self._ledger_sending != self._ledger_sent:
            out["ledger"] = self.ledger.report(
                {n: e.budget for n, e in self.config.catalog.items() if e.budget})
        return out

    def _delivered(self, answer: dict[str, Any]) -> None:
        have = answer.get("audit_have")
        self.audit_have = have if isinstance(have, int) else None
        if "audit_have" in answer:  # a coordinator that keeps reports has the ledger now
            self._ledger_sent = self._ledger_sending

    def _ended(self, report: dict[str, Any]) -> None:
        """An actor ended (reported in ``report``): settle its job's reservation to what its
        processes sent, append the outcome to the audit log, mark its record ended."""
        key = (report["job_id"], report["actor"])
        record = self.records.pop(key, None) or ActorRecord(*key)
        sent = sent_upper(self._progress(*key))
        self.ledger.settle(key[0], sent, report.get("reason") or report["state"])
        epsilon = None
        if record.charge is not None and record.delta:
            epsilon = epsilon_of([settled(Charge.from_json(record.charge), sent)],
                                 record.delta)
        stopped = "coordinator's request" in str(report.get("reason"))
        self.audit.ended(job_id=key[0], actor=key[1],
                         outcome="stopped" if stopped else report["state"],
                         reason=report.get("reason"), updates_sent=sent, epsilon=epsilon)
        record.ended = True
        if record.path(self.config.state_dir).parent.exists():
            record.save(self.config.state_dir)

    def _reap(self) -> None:
        for key, a in list(self.actors.items()):
            status = a.proc.poll()
            if status is None:
                continue
            del self.actors[key]
            self.finished.append({
                "job_id": a.job_id, "actor": a.actor,
                "state": "exited" if status == 0 else "failed",
                "reason": None if status == 0 else
                f"exit status {status}: {_last_line(a.log)}"})
            self._ended(self.finished[-1])

    def _progress(self, job_id: str, actor: str) -> Path:
        return self.config.state_dir / "jobs" / job_id / f"{actor}.progress"

    @staticmethod
    def _stop(*actors: Actor) -> None:
        """SIGTERM to every actor's process group at once, then SIGKILL to those that linger
        past one shared deadline (an actor ends within its own grace, site_actor's
        STOP_GRACE_S): stopping several actors takes as long as the slowest, not the sum,
        while the heartbeats wait."""
        live = [a for a in actors if a.proc.poll() is None]
        for actor in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(actor.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for actor in live:
            try:
                actor.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(actor.proc.pid, signal.SIGKILL)
                actor.proc.wait()


def _untrusted_coordinator(exc: BaseException) -> bool:
    """Whether the connection failed because this site does not trust the coordinator's
    certificate (the TLS error somewhere in the exception's chain)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hint(exc: BaseException) -> str:
    """What an unreachable coordinator's error may mean, when the error alone does not say."""
    if "Server disconnected" in str(exc):
        return ("; a coordinator that does not trust this site's certificate closes the "
                "connection so: tls.cert must be issued by the federation's CA, with the "
                "site's name as its CN (foedus certs --clients NAME)")
    return ""


def run_site(config: SiteConfig) -> int:
    """The agent's loop until SIGINT/SIGTERM; a coordinator that cannot be reached is retried
    (it may be restarting), a refused heartbeat ends the agent with status 2, and so does a
    coordinator whose certificate this site's CA does not verify on the first contact (a
    config mistake). A coordinator that does not trust this site's certificate closes the
    TLS connection, which looks like an outage: retried, with a hint saying so."""
    httpx = require("httpx", "federation")
    held = lock_state_dir(config.state_dir, "site")  # one agent per state: its ledger, log
    site = Site(config, warm=config.warm)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    again = False  # the last beat was an immediate one
    reached: bool | None = None  # the last beat's outcome: said once per change, not per beat
    try:
        while not stopping:
            started = time.monotonic()
            news = False
            try:
                news = site.beat()
                if reached is not True:
                    print(f"foedus site: connected to {config.coordinator} (heartbeat every "
                          f"{config.heartbeat_s:g}s; catalog: "
                          f"{', '.join(sorted(config.catalog)) or 'empty'}; state in "
                          f"{config.state_dir})", file=sys.stderr, flush=True)
                reached = True
            except (httpx.TransportError, CoordinatorUnavailable) as exc:
                log.warning("coordinator unreachable (%s); retrying", exc)
                if reached is None and _untrusted_coordinator(exc):
                    # a config mistake, not an outage: end now, naming what to fix (once the
                    # site has been connected it retries, so running jobs are not stopped)
                    raise ConfigError(
                        f"tls.ca: the coordinator at {config.coordinator} presented a "
                        f"certificate that {str(config.tls.ca)!r} does not verify ({exc}); "
                        "tls.ca must be the federation's CA, the one that issued the "
                        "coordinator's certificate") from exc
                if reached is not False:
                    print(f"foedus site: coordinator {config.coordinator} unreachable "
                          f"({exc}{_hint(exc)}); retrying every {config.heartbeat_s:g}s",
                          file=sys.stderr, flush=True)
                reached = False
            # a beat the coordinator held (a long poll) took the period already; one that
            # brought news is followed at once by the next long poll (so a second offer is
            # not left for a period), but never twice in a row: a coordinator that answers
            # every beat at once still sees one beat a period
            again = news and not again
            deadline = started + (0 if again else config.heartbeat_s)
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.05)  # a timer between heartbeats, checking for a stop signal
    finally:
        if site.actors:
            print(f"foedus site: stopping {len(site.actors)} actor(s) of "
                  f"{len({job for job, _ in site.actors})} job(s); a site started again "
                  "rejoins their jobs", file=sys.stderr, flush=True)
        site.close()
        held.close()
    return 0
