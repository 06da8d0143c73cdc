"""A site's warm process (foedus.federation.zygote): actors forked from it run in their own
session, their exit status reaches the site through the exit file, and one actor's failure
leaves the zygote serving the next. One zygote (a real process) for the module."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from foedus.federation.site_state import Adopted, start_time
from foedus.federation.zygote import Zygote
from tests.waiting import until


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.log")
    yield z
    z.close()


def fork(zygote: Zygote, where: Path, argv: list[str], name: str) -> Adopted:
    """Fork an actor once the zygote is ready; watched as the site watches it."""
    pid: int | None = None

    def forked() -> bool:
        nonlocal pid
        pid = zygote.fork(argv, where, where / f"{name}.log", where / f"{name}.exit")
        return pid is not None
    asyncio.run(until(forked, "the zygote ready to fork", timeout=120))
    assert pid is not None
    return Adopted(pid, "/never-in-a-cmdline/", where / f"{name}.progress", start_time(pid),
                   where / f"{name}.exit")


def test_a_forked_actor_runs_in_its_own_session_and_reports_its_exit_status(
        zygote: Zygote, tmp_path: Path) -> None:
    actor = fork(zygote, tmp_path, ["no-such-job.yaml", "client-000", "--progress",
                                    str(tmp_path / "bad.progress")], "bad")
    assert actor.wait(timeout=60) == 2  # site_actor's status for a job it cannot load
    assert "no-such-job.yaml" in (tmp_path / "bad.log").read_text()
    assert zygote.proc is not None and zygote.proc.poll() is None  # the zygote lives on


def test_a_killed_actor_is_seen_killed_and_the_zygote_forks_the_next(
        zygote: Zygote, tmp_path: Path) -> None:
    # a client whose broker accepts the connection and never answers: it waits (10 s)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        job = tmp_path / "job.yaml"
        job.write_text("job_id: waits\nrounds: 1\nclients: {count: 1}\ntransport: {type: "
                       f"mqtt, params: {{host: 127.0.0.1, port: {silent.getsockname()[1]}}}}}\n")
        actor = fork(zygote, tmp_path, [str(job), "client-000", "--progress",
                                        str(tmp_path / "waits.progress")], "waits")
        assert actor.poll() is None
        assert os.getsid(actor.pid) == actor.pid  # its own session: stopped as a group
        os.killpg(actor.pid, signal.SIGKILL)
        assert actor.wait(timeout=60) == -signal.SIGKILL
    after = fork(zygote, tmp_path, ["--help"], "help")
    assert after.wait(timeout=60) == 0
    assert json.loads((tmp_path / "help.exit").read_text()) == {"pid": after.pid, "status": 0}
