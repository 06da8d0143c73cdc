"""A real PostgreSQL server for the coordinator's tests, from Debian's package
(``/usr/lib/postgresql/15/bin``, installed by ``scripts/setup.sh``).

``initdb`` makes a throwaway cluster in a temporary directory; ``postgres`` serves it on a free
loopback port, its unix socket in that directory too, durability off (fsync, synchronous
commit: nothing here must survive a crash). PostgreSQL refuses to run as root, and CI
containers run the suite as root, so there the server runs as the unprivileged ``nobody``
(``subprocess.Popen(user=..., group=...)`` switches user in the child before exec: no sudo or
runuser needed) and the directory is made ``nobody``'s; as any other user it runs as that user.

Each test asks :meth:`Postgres.new_database` for a schema of its own, so tests never see
each other's rows. The server is stopped (immediate shutdown: SIGQUIT) and its directory removed at
the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import free_port

BIN = Path(os.environ.get("FOEDUS_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "foedus"  # the cluster's superuser (a database role, not an OS user)


def _as_unprivileged() -> dict[str, Any]:
    """``Popen`` arguments that drop root to ``nobody``; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@dataclass
class Postgres:
    """One PostgreSQL server process; ``new_database()`` gives a fresh database's URL."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    _count: int = field(default=0)

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        drop = _as_unprivileged()
        if drop:
            os.chown(self.root, drop["user"], drop["group"])
        env = {**os.environ, "LC_ALL": "C"}
        subprocess.run([str(BIN / "initdb"), "-D", str(self.root / "data"), "-U", USER,
                        "-A", "trust", "--no-sync", "--no-instructions", "-E", "UTF8",
                        "--locale=C"], check=True, capture_output=True, env=env, **drop)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
                 "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "shared_buffers=16MB",
                 "-c", "max_connections=40"],
                stdout=log, stderr=subprocess.STDOUT, env=env, **drop)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until a connection succeeds (the condition), the process dies, or 30 s pass."""
        deadline = time.monotonic() + 30
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n"
                                   f"{self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after 30 s:\n"
                                       f"{self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)  # between connection attempts, bounded by the deadline

    def new_database(self) -> str:
        """The URL of a fresh, empty schema that the URL makes the connection's only one (a
        schema is ten times quicker to create than a database, and as separate)."""
        self._count += 1
        name = f"test_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # immediate: nothing here must survive
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session (per xdist worker), stopped at its end."""
    if not (BIN / "postgres").exists():
        pytest.fail(f"PostgreSQL is not installed at {BIN} (scripts/setup.sh installs it)")
    # not pytest's tmp_path: its parents are root's and closed to nobody
    server = Postgres(Path(tempfile.mkdtemp(prefix="foedus-pg-")), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
