"""Actors as OS processes that a test can watch, kill, pause and resume.

Each :class:`Actor` is one ``python -m tests.reliability.actor`` process; a reader thread
collects its stdout lines so a test can wait for "round 3 finished" or "client trained round 2".
:class:`Actors` owns every process a test started and kills them all afterwards, even when the
test fails.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: how long a client process may take to import, build its model and subscribe: seconds when
#: idle, over a minute on a machine running other tests' processes
STARTUP_S = 180.0


class Actor:
    def __init__(self, role: str, job: dict[str, Any], log: Path, *args: str) -> None:
        self.role = role
        self.log = log
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._stderr = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.actor", role, json.dumps(job), *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.strip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60) -> str:
        """The first output line matching ``predicate``; fails with the actor's log if none."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{self.role} never printed the expected line; output {self.lines[-5:]}, "
                        f"exit {self.proc.poll()}, log:\n{self.log.read_text()[-3000:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def rounds(self) -> list[dict[str, Any]]:
        """The round records a server printed so far."""
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait_round(self, rnd: int, timeout: float = 60) -> None:
        self.wait_for(lambda line: line.startswith("{") and json.loads(line)["round"] >= rnd,
                      timeout)

    def summary(self, timeout: float = 120) -> dict[str, Any]:
        line = self.wait_for(lambda line: line.startswith("summary "), timeout)
        return json.loads(line[len("summary "):])  # type: ignore[no-any-return]

    def trained(self) -> list[int]:
        return [int(line.split()[1]) for line in list(self.lines) if line.startswith("trained ")]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process must be able to die
            self.proc.kill()
        self.proc.wait()

    def release(self) -> None:
        """Let a client started with ``held=True`` join its job."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)


class Actors:
    """Starts actors for one test and kills whatever is left of them at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Actor] = []

    def server(self, job: dict[str, Any]) -> Actor:
        return self._start("server", job, "server.log")

    def client(self, job: dict[str, Any], index: int, delay: float = 0.0, *,
               held: bool = False) -> Actor:
        """A client process, once subscribed; ``held``: once it has imported and built
        everything, waiting for :meth:`Actor.release` to join (a restart that takes no longer
        than a connection, however busy the machine)."""
        actor = self._start("client", job, f"client-{index}.log", str(index), str(delay),
                            *(["held"] if held else []))
        actor.wait_for(lambda line: line == ("loaded" if held else "ready"), STARTUP_S)
        return actor

    def clients(self, job: dict[str, Any], delays: list[float]) -> list[Actor]:
        """Start one client per entry of ``delays`` at once, then wait until all subscribed."""
        actors = [self._start("client", job, f"client-{i}.log", str(i), str(d))
                  for i, d in enumerate(delays)]
        for actor in actors:
            actor.wait_for(lambda line: line == "ready", STARTUP_S)
        return actors

    def _start(self, role: str, job: dict[str, Any], log: str, *args: str) -> Actor:
        actor = Actor(role, job, self.workdir / log, *args)
        self.started.append(actor)
        return actor

    def kill_all(self) -> None:
        for actor in self.started:
            actor.kill()


def iter_rejections(rounds: list[dict[str, Any]]) -> Iterator[tuple[int, str, int]]:
    for r in rounds:
        for reason, count in r["rejected"].items():
            yield r["round"], reason, count
