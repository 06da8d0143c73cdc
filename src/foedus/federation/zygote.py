"""A warm process: ``python -m foedus.federation.zygote``, from which a site forks its
actors, and the coordinator its jobs' server processes, instead of starting each as a cold
Python.

A cold actor process spends seconds importing foedus, numpy and scikit-learn before it can
take part in round 1 (most of a small job's time from submit to its first round). The zygote
imports them once, when the site (or the coordinator) starts, and then only forks: each
actor is a child forked on request, which at once leaves the zygote's session (``setsid``:
its own process group, which the site stops as it stops any actor), points its output at
the actor's log and runs :func:`foedus.federation.site_actor.main`, exactly what ``python -m
foedus.federation.site_actor`` runs (for the coordinator, :func:`foedus.federation.actor.
main`: a request names one of :data:`MAINS`). Isolation is the same as a fresh process's: a
crashing actor takes down only itself, never the zygote, the site or another job.

The protocol is JSON lines over the zygote's stdin and stdout, one request and one answer at
a time (the site holds the only pipe):

* the zygote writes ``{"ready": true}`` once its imports are done (and
  :data:`READY_LINE` to its log, for whoever watches it from outside);
* a request ``{"argv": [...], "cwd": DIR, "log": FILE, "exit": FILE[, "main": MODULE]}``
  is answered ``{"pid": PID}`` once the child runs (``main`` defaults to the site actor);
* when a child ends, the zygote (its parent) writes ``{"pid": PID, "status": STATUS}`` to
  the request's ``exit`` file (atomically) and then reaps it, the exit status as
  :class:`subprocess.Popen` reports it (negative: killed by that signal), since the site is
  not the actor's parent and cannot wait for it.

When its stdin closes (the site stopped or died) the zygote exits and leaves its children
running: a restarted site adopts them like any actor that survived it
(:mod:`foedus.federation.site_state`, which knows them by pid and start time, since a forked
child's command line is the zygote's).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import subprocess
import sys
import traceback
from pathlib import Path
from typing import IO, Any

__all__ = ["PRELOAD", "Zygote", "main"]

log = logging.getLogger("foedus.federation.zygote")

#: what every actor imports before its first round (scikit-learn for the default model);
#: one that is not installed is skipped. httpx imports its connection layer (httpcore,
#: anyio, h11, certifi) only at a client's first request, and aiohttp its server at the
#: hub's start: half a second of imports after the go unless they are here
PRELOAD = ("numpy", "foedus.runner", "foedus.federation.site_actor", "foedus.federation.actor",
           "foedus.models.sklearn", "foedus.data.datasets", "foedus.transport.https",
           "foedus.transport.mqtt", "sklearn.linear_model", "httpx", "httpcore", "anyio",
           "anyio._backends._asyncio", "h11", "certifi", "aiohttp", "aiohttp.web")
#: the modules a forked child may run (their ``main(argv)``): a site's client actor, the
#: coordinator's process for a job's actors without data
SITE_ACTOR = "foedus.federation.site_actor"
SERVER_ACTOR = "foedus.federation.actor"
MAINS = (SITE_ACTOR, SERVER_ACTOR)
#: how often the zygote reaps ended children while no request arrives
REAP_EVERY_S = 0.1


#: how long the site waits for the zygote's answer to a fork request before it gives up on
#: the zygote (and starts a fresh Python instead)
ANSWER_S = 10.0


class Zygote:
    """The site's handle on its zygote: started at once, used once it says it is ready;
    :meth:`fork` returns None (the site then starts a fresh Python) while it is not ready or
    after it died, so a broken zygote costs speed, never a job."""

    def __init__(self, log_path: Path) -> None:
        with log_path.open("ab") as out:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "foedus.federation.zygote"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=out, start_new_session=True,
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        self.ready = False

    def _line(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not readable:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise OSError("the zygote closed its output")
        found: dict[str, Any] = json.loads(line)
        return found

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the zygote to say it is ready (its imports
        done); False if it is not by then, or died."""
        if not self.ready and self.proc is not None and self.proc.poll() is None:
            try:
                self.ready = bool(self._line(timeout))
            except (OSError, ValueError) as exc:
                log.warning("the warm process failed (%s); actors start cold from now on", exc)
                self.close()
        return self.ready

    def fork(self, argv: list[str], cwd: Path, log_file: Path, exit_file: Path,
             main: str = SITE_ACTOR) -> int | None:
        """A forked actor's pid (running ``main``'s ``main(argv)``, one of :data:`MAINS`),
        or None when the zygote cannot fork one now."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return None
        try:
            if not self.ready:
                self.ready = bool(self._line(0.0))
                if not self.ready:
                    return None
            stdin: IO[bytes] | None = self.proc.stdin
            assert stdin is not None
            with contextlib.suppress(FileNotFoundError):
                exit_file.unlink()  # an earlier process's status of this actor
            stdin.write((json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log_file),
                                     "exit": str(exit_file), "main": main}) + "\n").encode())
            stdin.flush()
            answer = self._line(ANSWER_S)
            if answer is None or not isinstance(answer.get("pid"), int):
                raise OSError(f"the zygote did not answer a fork request: {answer!r}")
            pid: int = answer["pid"]
            return pid
        except (OSError, ValueError) as exc:
            log.warning("the warm process failed (%s); actors start cold from now on", exc)
            self.close()
            return None

    def close(self) -> None:
        """Stop the zygote (its closed input is its stop); the actors it forked live on."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _child(request: dict[str, Any], started: int) -> None:
    """In the forked child: become the actor (never returns). ``started``: the pipe closed
    once the child has its own session, which the zygote waits for before it answers with
    the pid (the site may stop the actor's process group at once)."""
    status = 1
    try:
        os.setsid()
        os.close(started)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        main = request.get("main", SITE_ACTOR)
        if main not in MAINS:
            raise ValueError(f"the zygote runs only {MAINS}, not {main!r}")
        status = importlib.import_module(main).main(request["argv"])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _reap(exits: dict[int, Path]) -> None:
    """Reap every ended child, writing its exit file first: the status is read without
    reaping (``WNOWAIT``), so the pid stays a zombie, which a watcher counts as running, until
    its file exists (reaped first, a watcher could see neither the process nor the file)."""
    while exits:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        pid = info.si_pid
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        status = -info.si_status if killed else info.si_status
        path = exits.pop(pid, None)
        if path is not None:
            with contextlib.suppress(OSError):
                _write_atomic(path, {"pid": pid, "status": status})
        os.waitpid(pid, 0)


def _preload() -> None:
    """Import what actors need: :data:`PRELOAD` and every plugin (topologies, models,
    transports, stages: what :func:`foedus.runner.prepare` would import in each actor)."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    try:
        from foedus.plugins import load_plugins
        load_plugins(everything=True)  # actors forked later must not import plugins again
    except Exception:  # an actor that needs a broken plugin reports it itself
        traceback.print_exc()


#: the line the zygote writes to its log (stderr) once its imports are done
READY_LINE = "foedus: warm process ready"


def main() -> int:
    _preload()
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    print(f"{READY_LINE} (pid {os.getpid()})", file=sys.stderr, flush=True)
    exits: dict[int, Path] = {}
    stdin = sys.stdin.buffer
    while True:
        readable, _, _ = select.select([stdin], [], [], REAP_EVERY_S)
        _reap(exits)
        if not readable:
            continue
        line = stdin.readline()
        if not line:  # the site is gone: its actors live on, adopted by the next site
            return 0
        request = json.loads(line)
        out.flush()
        ready, started = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready)
            _child(request, started)
        os.close(started)
        os.read(ready, 1)  # EOF once the child has its own session (or died)
        os.close(ready)
        exits[pid] = Path(request["exit"])
        print(json.dumps({"pid": pid}), file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
