"""``foedus federation demo``: a whole federation on this machine, for a first look.

One command starts a coordinator and three site agents on loopback (certificates from a fresh
CA, the coordinator's SQLite database and every site's state in a temporary directory), submits
a job over the coordinator's HTTPS API like ``foedus submit`` does, prints the job's events
and rounds as they happen and its result, and stops everything: on success, on failure, on
Ctrl-C and on SIGTERM. Exit status 0 when the job finished with a model.

The coordinator and the sites run in this process (an asyncio loop and one thread per site),
so the demo starts quickly; the job's actors still run as they would in a deployment: the
server in a process the coordinator starts, each client in a process its site starts. The job
talks over the ``https`` transport, its hub hosted by the server's process with mutual TLS, so
nothing beyond foedus's ``federation`` extra is needed (no broker).

:class:`LocalFederation` writes the same files a deployment has (``coordinator.yaml``, one
``site-X.yaml`` per site, certificates, a job file), which the benchmark reuses to run the
pieces as separate processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from foedus.certs import create_deployment_certs
from foedus.config.parts import client_id
from foedus.core.errors import ConfigError, require
from foedus.federation.coordinator import Coordinator, CoordinatorConfig
from foedus.federation.site import CoordinatorUnavailable, Site, SiteConfig

__all__ = ["LocalFederation", "run_demo"]

ADMIN_TOKEN = "the-demo-admin-token"  # a throwaway federation on loopback
TERMINAL = ("finished", "failed", "cancelled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalFederation:
    """The files of a federation on loopback, under ``root``: certificates, the coordinator's
    and every site's config, and a job file for ``sites`` clients on the bundled digits."""

    root: Path
    sites: list[str]
    coordinator_port: int = 0
    heartbeat_s: float = 0.2

    @classmethod
    def create(cls, root: Path, sites: int, *, coordinator_port: int = 0,
               heartbeat_s: float = 0.2, max_rounds: int = 100) -> LocalFederation:
        """The files; ``max_rounds``: the sites' policy (the demo raises it to its --rounds,
        so a longer demo is not refused by its own sites)."""
        if sites < 2:
            raise ConfigError(f"--sites: a federation needs at least 2 sites, got {sites}")
        names = [f"site-{i + 1}" for i in range(sites)]
        made = cls(root, names, coordinator_port or _free_port(), heartbeat_s)
        # one certificate per site (its identity at the coordinator) and per client actor
        # (its identity at the job's hub)
        create_deployment_certs(root / "certs", [*names, *map(client_id, range(sites))])
        made._write("coordinator.yaml", {
            "listen": {"host": "127.0.0.1", "port": made.coordinator_port},
            "state_dir": "coordinator", "admin_token_file": "admin.token",
            "heartbeat_timeout": 10, "queue_timeout": 60,
            "tls": {"ca": "certs/ca.pem", "cert": "certs/server.pem", "key": "certs/server.key"},
            "catalog": {"digits": {"dataset": "digits"}}})
        (root / "admin.token").write_text(ADMIN_TOKEN + "\n")
        for name in names:
            made._write(f"{name}.yaml", {
                "coordinator": made.url, "state_dir": name, "heartbeat_s": heartbeat_s,
                "tls": {"ca": "certs/ca.pem", "cert": f"certs/clients/{name}.pem",
                        "key": f"certs/clients/{name}.key"},
                "catalog": {"digits": {"dataset": "digits"}},
                "policy": {"models": ["sklearn-sgd"], "max_rounds": max_rounds}})
        return made

    def _write(self, name: str, data: dict[str, Any]) -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.coordinator_port}"

    def job(self, rounds: int, job_id: str = "digits-demo") -> Path:
        """A job file for every site: the digits catalog entry, the https transport with its
        hub in the server's process (mutual TLS, each actor's own certificate)."""
        certs = self.root / "certs"
        return self._write(f"{job_id}.yaml", {
            "job_id": job_id, "seed": 3, "rounds": rounds, "round_timeout": 60,
            "data": {"dataset": "digits", "partition": "iid"},
            "clients": {"count": len(self.sites), "epochs": 1},
            "model": {"type": "sklearn-sgd"},
            "transport": {"type": "https", "params": {
                "url": f"https://127.0.0.1:{_free_port()}", "actor": "{actor}",
                "serve_as": "server", "verify_sender": True,
                "serve": {"ca": str(certs / "ca.pem"), "cert": str(certs / "server.pem"),
                          "key": str(certs / "server.key"), "require_client_cert": True},
                "tls": {"ca": str(certs / "ca.pem"),
                        "cert": str(certs / "clients" / "{actor}.pem"),
                        "key": str(certs / "clients" / "{actor}.key")}}}})


def _site_loop(config: SiteConfig, stop: threading.Event, errors: list[str]) -> None:
    """A site agent's heartbeat loop, in a thread; its actors are stopped when it ends."""
    httpx = require("httpx", "federation")
    site = Site(config)
    try:
        while not stop.is_set():
            try:
                site.beat()
            except (httpx.TransportError, CoordinatorUnavailable):
                pass  # the coordinator is starting or stopping
            except ConfigError as exc:  # refused by the coordinator: nothing to retry
                errors.append(str(exc))
                return
            stop.wait(config.heartbeat_s)
    finally:
        site.close()


class _Printer:
    """Prints a job's new events and rounds, each once."""

    def __init__(self, out: TextIO, rounds: int) -> None:
        self.out, self.rounds = out, rounds
        self.began, self.began_monotonic = time.time(), time.monotonic()
        self.events = 0
        self.seen = 0
        self.first_round_s: float | None = None

    def show(self, coordinator: Coordinator, job_id: str) -> None:
        events = coordinator.store.events(job_id)
        for e in events[self.events:]:
            self.say(f"  {e['at'] - self.began:5.1f}s  {e['text']}")
        self.events = len(events)
        records = coordinator.store.rounds(job_id)
        for r in records[self.seen:]:
            if self.first_round_s is None:
                self.first_round_s = time.monotonic() - self.began_monotonic
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r.get("metrics", {}).items()))
            self.say(f"round {r['round']:>3}/{self.rounds}  updates {r.get('accepted')}  "
                     f"{metrics}")
        self.seen = len(records)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


async def _demo(fed: LocalFederation, rounds: int, out: TextIO) -> int:
    web = require("aiohttp.web", "federation")
    httpx = require("httpx", "federation")
    coordinator = Coordinator(CoordinatorConfig.load(fed.root / "coordinator.yaml"))
    runner = web.AppRunner(coordinator.app(), access_log=None)
    stop_sites = threading.Event()
    threads: list[threading.Thread] = []
    errors: list[str] = []
    job_id: str | None = None
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:  # SIGTERM cleans up as Ctrl-C does
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", fed.coordinator_port,
                          ssl_context=coordinator.config.tls.server_context()).start()
        for name in fed.sites:
            config = SiteConfig.load(fed.root / f"{name}.yaml")
            thread = threading.Thread(target=_site_loop, args=(config, stop_sites, errors),
                                      name=f"foedus-{name}", daemon=True)
            thread.start()
            threads.append(thread)
        print(f"foedus federation demo: coordinator {fed.url} (state in {fed.root}), sites "
              f"{', '.join(fed.sites)}", file=out, flush=True)
        await _until(lambda: _online(coordinator) >= len(fed.sites) or bool(errors), 60,
                     "every site online", coordinator)
        if errors:
            raise ConfigError(f"a site could not join: {errors[0]}")
        job_path = fed.job(rounds)
        printer = _Printer(out, rounds)
        job_id = await asyncio.to_thread(_submit, httpx, fed, job_path)
        printer.say(f"submitted {job_path.name} as {job_id}: {len(fed.sites)} clients, one per "
                    f"site, {rounds} rounds")
        while True:
            coordinator.tick()
            printer.show(coordinator, job_id)
            job = coordinator.store.job(job_id)
            if job is not None and job.state in TERMINAL:
                break
            await asyncio.sleep(0.05)  # the demo's tick: the service's, ten times as often
        return _summary(printer, job, time.monotonic() - printer.began_monotonic)
    finally:
        if job_id is not None:
            job = coordinator.store.job(job_id)
            if job is not None and job.state not in TERMINAL:
                coordinator.cancel(job, "the demo (interrupted)")
                print("foedus federation demo: interrupted; the job was cancelled",
                      file=sys.stderr)
        stop_sites.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, 30)
        await runner.cleanup()
        coordinator.stop_all()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def _online(coordinator: Coordinator) -> int:
    return sum(s["online"] for s in coordinator.store.sites(coordinator.config.heartbeat_timeout))


async def _until(check: Callable[[], bool], seconds: float, what: str,
                 coordinator: Coordinator) -> None:
    """Serve (the API runs on this loop) until ``check`` holds, or fail naming ``what``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise ConfigError(f"the demo timed out after {seconds:g}s waiting for {what}")
        coordinator.tick()
        await asyncio.sleep(0.05)  # between checks of the condition, bounded by the deadline


def _submit(httpx: Any, fed: LocalFederation, job_path: Path) -> str:
    """What ``foedus submit`` sends: the job file, over HTTPS, with the admin's token."""
    verify = ssl.create_default_context(cafile=str(fed.root / "certs" / "ca.pem"))
    with httpx.Client(base_url=fed.url, verify=verify, timeout=30.0,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        answer = api.post("/v1/jobs", json={"job_yaml": job_path.read_text()})
    body = answer.json()
    if answer.status_code != 200:
        raise ConfigError(f"the coordinator refused the demo's job: {body.get('error')}")
    job_id: str = body["id"]
    return job_id


def _summary(printer: _Printer, job: Any, seconds: float) -> int:
    result = job.result or {}
    if job.state != "finished":
        printer.say(f"foedus: job {job.id} {job.state}: {job.reason}")
        return 1
    accuracy = result.get("final_accuracy")
    first = printer.first_round_s
    printer.say(f"\nfoedus: job {job.id} finished: {result.get('rounds')} rounds at "
                f"{len(job.sites)} sites, {seconds:.1f}s from submit"
                + (f" (round 1 after {first:.1f}s)" if first is not None else ""))
    if isinstance(accuracy, float):
        printer.say(f"  final accuracy {accuracy:.4f}, final loss {result.get('final_loss'):.4f}")
    return 0


def run_demo(rounds: int = 3, sites: int = 3, *, keep: str | None = None,
             out: TextIO = sys.stdout) -> int:
    """Run the demo; its exit status. ``keep``: a directory to leave the federation's files
    (configs, certificates, databases, logs) in, instead of a temporary one."""
    if rounds < 1:
        raise ConfigError(f"--rounds: expected at least 1, got {rounds}")
    try:
        if keep is not None:
            root = Path(keep)
            root.mkdir(parents=True, exist_ok=True)
            return asyncio.run(_demo(LocalFederation.create(
                root.resolve(), sites, max_rounds=max(100, rounds)), rounds, out))
        with tempfile.TemporaryDirectory(prefix="foedus-federation-") as tmp:
            return asyncio.run(_demo(LocalFederation.create(
                Path(tmp), sites, max_rounds=max(100, rounds)), rounds, out))
    except asyncio.CancelledError:  # SIGTERM: everything was stopped on the way out
        print("foedus federation demo: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
