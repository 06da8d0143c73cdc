"""``foedus site --config site.yaml``: the agent an organisation runs, next to its data.

It only ever connects *out*, to the coordinator, over HTTPS with its own client certificate
(its identity). Every ``heartbeat_s`` it reports itself and the state of its actors, and reads
its assignments back:

* an ``offered`` actor is checked against the site's **local policy** and its **data
  catalog** (:mod:`foedus.federation.policy`) *here*, whatever the coordinator decided; the
  site answers with acceptance or its reason for refusing; an accepted actor is started at
  once as ``python -m foedus.cli actor JOB client-00N`` in its own process and session, from
  the job file with the catalog's data filled in, so a crashing job never takes the agent
  down and several jobs run side by side;
* a ``stop`` (the job was cancelled, failed or ended) stops the actor's process group;
* an actor that exits is reaped and reported (``exited`` or ``failed`` with its log's last
  line).

The loop is deliberately synchronous and simple: it waits on a timer between heartbeats, and
nothing it does takes long (starting a process does not wait for it).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from foedus.core.errors import ConfigError, FoedusError, require
from foedus.federation.policy import CatalogEntry, Policy, check_policy, fill_data, parse_catalog
from foedus.federation.settings import path_of, read_config, tls_of
from foedus.transport.tls import TLSConfig

log = logging.getLogger("foedus.federation.site")

__all__ = ["Site", "SiteConfig", "run_site"]

VERSION = "0.1.0"


@dataclass(frozen=True)
class SiteConfig:
    """``site.yaml`` (docs/federation.md lists every key)."""

    coordinator: str
    state_dir: Path
    tls: TLSConfig
    heartbeat_s: float
    catalog: dict[str, CatalogEntry]
    policy: Policy

    @classmethod
    def load(cls, path: str | Path) -> SiteConfig:
        raw = read_config(path, {"coordinator", "state_dir", "tls", "heartbeat_s", "catalog",
                                 "policy"}, {"coordinator", "state_dir", "tls"})
        url = raw["coordinator"]
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ConfigError(f"coordinator: expected an https:// URL, got {url!r}")
        beat = raw.get("heartbeat_s", 2)
        if isinstance(beat, bool) or not isinstance(beat, int | float) or beat <= 0:
            raise ConfigError(f"heartbeat_s: expected seconds > 0, got {beat!r}")
        return cls(coordinator=url.rstrip("/"),
                   state_dir=path_of(raw, raw["state_dir"], "state_dir"),
                   tls=tls_of(raw, identity=True), heartbeat_s=float(beat),
                   catalog=parse_catalog(raw.get("catalog")),
                   policy=Policy.from_dict(raw.get("policy")))


@dataclass
class Actor:
    job_id: str
    actor: str
    proc: subprocess.Popen[bytes]
    log: Path
    reported: dict[str, Any] = field(default_factory=dict)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


class Site:
    """The agent's state: its running actors and its client to the coordinator."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        httpx = require("httpx", "federation")
        self.http = httpx.Client(base_url=config.coordinator, verify=config.tls.client_context(),
                                 timeout=10.0)
        self.actors: dict[tuple[str, str], Actor] = {}
        self.finished: list[dict[str, Any]] = []  # reports of ended actors not yet delivered

    def close(self) -> None:
        """Stop every actor started here (the agent is going away) and the client."""
        for actor in list(self.actors.values()):
            self._stop(actor)
        self.http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        data: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise ConfigError(f"the coordinator refused {path}: {data.get('error', data)}")
        return data

    def beat(self) -> None:
        """One heartbeat: report, read the assignments, act on them."""
        self._reap()
        reports = [{"job_id": a.job_id, "actor": a.actor, "state": "running"}
                   for a in self.actors.values()] + self.finished
        offers = {"catalog": sorted(self.config.catalog), "version": VERSION,
                  "policy": self.config.policy.as_dict()}  # shown to users, read by dry runs
        answer = self._post("/v1/site/heartbeat",
                            {"version": VERSION, "offers": offers, "actors": reports})
        self.finished = []
        for a in answer.get("assignments", []):
            key = (a["job_id"], a["actor"])
            if a["state"] == "offered" and key not in self.actors:
                self._offer(a)
            elif a["state"] == "stop":
                # also for an actor never started here (the job ended before this site's
                # answer): the report is what lets the coordinator mark the assignment stopped
                if key in self.actors:
                    self._stop(self.actors.pop(key))
                self.finished.append({"job_id": key[0], "actor": key[1], "state": "exited",
                                      "reason": "stopped at the coordinator's request"})

    def _offer(self, a: dict[str, Any]) -> None:
        job_id, actor = a["job_id"], a["actor"]
        try:
            job = yaml.safe_load(a["job_yaml"])
            running = len({j for j, _ in self.actors})
            reason = check_policy(job, self.config.policy, running)
            if reason is None:
                job = fill_data(job, self.config.catalog)
        except (FoedusError, yaml.YAMLError, TypeError, AttributeError) as exc:
            reason = str(exc)
        if reason is not None:
            log.warning("refusing %s of job %s: %s", actor, job_id, reason)
            self._post("/v1/site/answer", {"job_id": job_id, "actor": actor, "accept": False,
                                           "reason": reason})
            return
        try:
            self._post("/v1/site/answer", {"job_id": job_id, "actor": actor, "accept": True})
        except ConfigError as exc:  # the offer was withdrawn meanwhile (the job ended)
            log.warning("not starting %s of job %s: %s", actor, job_id, exc)
            return
        where = self.config.state_dir / "jobs" / job_id
        where.mkdir(parents=True, exist_ok=True)
        (where / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
        logfile = where / f"{actor}.log"
        with logfile.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "foedus.cli", "actor", str(where / "job.yaml"), actor],
                cwd=where, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        self.actors[(job_id, actor)] = Actor(job_id, actor, proc, logfile)
        log.info("started %s of job %s (pid %d)", actor, job_id, proc.pid)

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

    @staticmethod
    def _stop(actor: Actor) -> None:
        """SIGTERM to the actor's process group, SIGKILL if it lingers."""
        if actor.proc.poll() is not None:
            return
        try:
            os.killpg(actor.proc.pid, signal.SIGTERM)
            actor.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(actor.proc.pid, signal.SIGKILL)
            actor.proc.wait()
        except ProcessLookupError:
            actor.proc.wait()


def run_site(config: SiteConfig) -> int:
    """The agent's loop until SIGINT/SIGTERM; a coordinator that cannot be reached is retried
    (it may be restarting), a refused heartbeat (e.g. a certificate the coordinator does not
    trust) ends the agent with status 2."""
    httpx = require("httpx", "federation")
    site = Site(config)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            try:
                site.beat()
            except httpx.TransportError as exc:
                log.warning("coordinator unreachable (%s); retrying", exc)
                print(f"foedus site: coordinator unreachable ({exc}); retrying",
                      file=sys.stderr, flush=True)
            deadline = time.monotonic() + config.heartbeat_s
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.05)  # a timer between heartbeats, checking for a stop signal
    finally:
        site.close()
    return 0
