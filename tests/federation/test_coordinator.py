"""The coordinator's job lifecycle, in process: no HTTP, no site processes, a clock moved by
hand. Sites are played by writing their heartbeats and answers to the store, as the API
handlers do. (tests/federation/test_federation.py runs the same lifecycle as real processes.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from foedus.certs import create_deployment_certs
from foedus.core.errors import ConfigError
from foedus.federation.coordinator import (
    PID_FILE,
    PRESTART_MAX,
    Coordinator,
    CoordinatorConfig,
    Refused,
    _pid_runs,
    serve,
)
from foedus.federation.policy import parse_catalog
from foedus.federation.settings import lock_state_dir
from foedus.federation.site_state import start_time
from foedus.federation.store import Job
from foedus.transport.tls import TLSConfig


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


class Launched:
    """Stands for a process the coordinator started: it runs until it is waited for. Its pid
    is above the kernel's pid_max, so the coordinator's signals to its group reach nothing."""

    PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.pid = self.PID_MAX + 1000
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = -15
        return self.returncode


class Launcher:
    """Records what the coordinator starts, instead of starting it."""

    def __init__(self) -> None:
        self.started: list[Launched] = []

    def __call__(self, args: list[str], **options: Any) -> Launched:
        self.started.append(Launched(args))
        return self.started[-1]


@pytest.fixture
def launcher() -> Launcher:
    return Launcher()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def coordinator(tmp_path: Path, clock: Clock, launcher: Launcher) -> Iterator[Coordinator]:
    config = CoordinatorConfig(
        host="127.0.0.1", port=0, state_dir=tmp_path / "state",
        tls=TLSConfig("ca.pem", "cert.pem", "key.pem"),  # the API is not served here
        admin_token_file=tmp_path / "admin.token", heartbeat_timeout=15,
        catalog=parse_catalog({"digits": {"dataset": "digits"},
                               "breast_cancer": {"dataset": "breast_cancer"}}),
        queue_timeout=120)
    made = Coordinator(config, clock=clock, launch=launcher)  # type: ignore[arg-type]
    yield made
    made.stop_all()


def beat(c: Coordinator, *sites: str) -> None:
    for site in sites:
        c.store.heartbeat(site, "test", {"catalog": ["digits"]})


def job_of(c: Coordinator, job_id: str) -> Job:
    found = c.store.job(job_id)
    assert found is not None
    return found


def job_yaml(clients: int = 2, **extra: Any) -> str:
    text: str = yaml.safe_dump({
        "job_id": "j", "rounds": 2, "data": {"dataset": "digits"},
        "clients": {"count": clients}, "model": {"type": "sklearn-sgd"},
        "transport": {"type": "mqtt", "params": {"host": "127.0.0.1", "port": 1}}, **extra})
    return text


def answer(c: Coordinator, job_id: str, state: str, *sites: str) -> None:
    for a in c.store.assignments(job_id=job_id):
        if a["site"] in sites:
            c.store.set_assignment(job_id, a["site"], a["actor"], state)


def test_a_job_whose_sites_stay_silent_fails_naming_them(
        coordinator: Coordinator, clock: Clock) -> None:
    beat(coordinator, "site-a", "site-b", "site-c")
    job_id = coordinator.submit("ann", job_yaml(3, queue_timeout=30), None)
    assert "queue_timeout" not in job_of(coordinator, job_id).job_yaml
    answer(coordinator, job_id, "accepted", "site-a")
    clock.now += 29
    coordinator.tick()
    assert job_of(coordinator, job_id).state == "queued"
    clock.now += 1
    coordinator.tick()
    job = coordinator.store.job(job_id)
    assert job is not None and job.state == "failed"
    assert job.reason == "queued for 30s (queue_timeout) without an answer from site-b, site-c"
    # the site that had accepted is told to stop the actor it started
    assert {a["site"]: a["state"] for a in coordinator.store.assignments(job_id=job_id)} == {
        "site-a": "stop", "site-b": "stop", "site-c": "stop"}


def test_without_queue_timeout_in_the_job_the_coordinators_default_applies(
        coordinator: Coordinator, clock: Clock) -> None:
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(), None)
    clock.now += 119
    coordinator.tick()
    assert job_of(coordinator, job_id).state == "queued"
    clock.now += 1
    coordinator.tick()
    assert "queued for 120s" in (job_of(coordinator, job_id).reason or "")


def test_a_dataset_the_coordinators_catalog_lacks_is_refused_saying_whose_catalog(
        coordinator: Coordinator) -> None:
    # it said "no data catalog entry 'admissions' here": here being the coordinator, which
    # a submitter reading a refusal could not tell from a site
    beat(coordinator, "site-a", "site-b")
    with pytest.raises(Refused, match=r"^job file: no data catalog entry 'admissions' at the "
                                      r"coordinator \(its catalog names the server's held-out "
                                      r"data .*\) \(entries: breast_cancer, digits\)$"):
        coordinator.submit("ann", job_yaml(data={"dataset": "admissions"}), None)


def test_a_bad_queue_timeout_is_refused_naming_the_key(coordinator: Coordinator) -> None:
    beat(coordinator, "site-a", "site-b")
    with pytest.raises(Refused, match=r"^job file: queue_timeout: expected seconds > 0, got "
                                      r"'soon'$"):
        coordinator.submit("ann", job_yaml(queue_timeout="soon"), None)


def test_a_site_that_stops_heartbeating_during_a_job_is_an_event(
        coordinator: Coordinator, clock: Clock) -> None:
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(topology={"type": "swarm"}), None)
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    assert job_of(coordinator, job_id).state == "running"
    clock.now += 16
    beat(coordinator, "site-b")
    coordinator.tick()
    coordinator.tick()  # shown once, not once a tick
    beat(coordinator, "site-a")
    coordinator.tick()
    texts = [e["text"] for e in coordinator.store.events(job_id)]
    assert texts[-2:] == ["site site-a offline: no heartbeat for 16s", "site site-a back online"]


def test_a_restarted_coordinator_does_not_blame_its_own_downtime_on_the_sites(
        coordinator: Coordinator, clock: Clock, launcher: Launcher) -> None:
    # the coordinator was down 20 s mid-job; its sites retried all along and beat again
    # within a heartbeat of its return. The job's events used to say every site had gone
    # offline (and was back): the first tick after the restart came before their beats
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(topology={"type": "swarm"}), None)
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    coordinator.stop_all()
    clock.now += 20
    restarted = Coordinator(coordinator.config, clock=clock,
                            launch=launcher)  # type: ignore[arg-type]
    try:
        restarted.tick()
        beat(restarted, "site-a", "site-b")
        restarted.tick()
        # a site still silent a whole heartbeat_timeout after the restart is offline
        clock.now += 16
        beat(restarted, "site-b")
        restarted.tick()
        texts = [e["text"] for e in restarted.store.events(job_id)]
        assert not any("site-b" in t for t in texts if "offline" in t or "online" in t)
        assert texts[-1] == "site site-a offline: no heartbeat for 16s"
    finally:
        restarted.stop_all()


def test_a_port_already_taken_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    certs = create_deployment_certs(tmp_path / "certs", [])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = CoordinatorConfig(
            host="127.0.0.1", port=port, state_dir=tmp_path / "state",
            tls=TLSConfig(str(certs.ca), str(certs.server_cert), str(certs.server_key)),
            admin_token_file=tmp_path / "admin.token", heartbeat_timeout=15, catalog={},
            warm=False)
        with pytest.raises(ConfigError, match=rf"^listen: cannot listen on 127.0.0.1:{port}: "
                                              r"Address already in use \(another coordinator"):
            asyncio.run(serve(config))


def test_a_second_coordinator_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    certs = create_deployment_certs(tmp_path / "certs", [])
    config = CoordinatorConfig(
        host="127.0.0.1", port=0, state_dir=tmp_path / "state",
        tls=TLSConfig(str(certs.ca), str(certs.server_cert), str(certs.server_key)),
        admin_token_file=tmp_path / "admin.token", heartbeat_timeout=15, catalog={},
        warm=False)
    held = lock_state_dir(config.state_dir, "coordinator")
    try:
        with pytest.raises(ConfigError, match=rf"^state_dir: '{config.state_dir}' is in use by "
                                              rf"another foedus coordinator \(pid {os.getpid()}"):
            asyncio.run(serve(config))
    finally:
        held.close()


def test_a_swarm_runs_wholly_at_sites_and_ends_with_its_peers(
        coordinator: Coordinator) -> None:
    beat(coordinator, "site-a", "site-b")
    ok = coordinator.submit("ann", job_yaml(topology={"type": "swarm"}), None)
    bad = coordinator.submit("ann", job_yaml(topology={"type": "swarm"}), None)
    for job_id in (ok, bad):
        answer(coordinator, job_id, "accepted", "site-a", "site-b")
        assert coordinator.own_actors(job_of(coordinator, job_id)) == []
    coordinator.tick()
    assert coordinator.servers == {}  # no process started here
    answer(coordinator, ok, "done", "site-a", "site-b")
    answer(coordinator, bad, "done", "site-a")
    coordinator.store.set_assignment(bad, "site-b", "client-001", "failed", "exit status 1: x")
    coordinator.tick()
    finished, failed = coordinator.store.job(ok), coordinator.store.job(bad)
    assert finished is not None and finished.state == "finished"
    assert failed is not None and failed.state == "failed"
    assert failed.reason == "client-001 at site site-b failed: exit status 1: x"


def test_a_job_without_a_server_keeps_its_reporting_actors_rounds_from_its_site(
        coordinator: Coordinator) -> None:
    beat(coordinator, "site-a", "site-b")
    swarm = coordinator.submit("ann", job_yaml(topology={"type": "swarm"}), None)
    sent = [{"round": 1, "accepted": 1}, {"round": 2, "accepted": 1}]
    # client-001's view of the rounds is not the job's; nor may site-b speak for client-000
    coordinator.site_rounds("site-b", [{"job_id": swarm, "actor": "client-001",
                                        "records": [{"round": 1, "accepted": 9}]},
                                       {"job_id": swarm, "actor": "client-000",
                                        "records": [{"round": 1, "accepted": 9}]}])
    assert coordinator.store.rounds(swarm) == []
    coordinator.site_rounds("site-a", [{"job_id": swarm, "actor": "client-000",
                                        "records": sent}])
    coordinator.site_rounds("site-a", [{"job_id": swarm, "actor": "client-000",
                                        "records": sent[1:]}])  # sent again: kept once
    assert coordinator.store.rounds(swarm) == sent
    vertical = coordinator.submit("ann", yaml.safe_dump({
        "job_id": "v", "rounds": 2, "data": {"dataset": "breast_cancer"},
        "transport": {"type": "mqtt", "params": {"host": "127.0.0.1", "port": 1}},
        "topology": {"type": "vertical", "params": {"label_party": "lab", "parties": {
            "hospital": {"columns": list(range(15))},
            "lab": {"columns": list(range(15, 30))}}}}}), None)
    assert coordinator.reporter(job_of(coordinator, vertical)) == "lab"  # the labels' party
    central = coordinator.submit("ann", job_yaml(), None)
    assert coordinator.reporter(job_of(coordinator, central)) is None  # its server records


@pytest.mark.parametrize(("topology", "clients", "here", "at_sites"), [
    ({"type": "centralized"}, 2, ["server"], ["client-000", "client-001"]),
    ({"type": "hierarchical", "params": {"tree": [
        {"edge": "north", "children": ["client-000", "client-001"]},
        {"edge": "south", "children": ["client-002"]}]}},
     3, ["server", "north", "south"], ["client-000", "client-001", "client-002"]),
    ({"type": "async"}, 2, ["server"], ["client-000", "client-001"]),
    ({"type": "swarm"}, 3, [], ["client-000", "client-001", "client-002"]),
])
def test_actors_without_data_run_here_and_data_holders_at_sites(
        coordinator: Coordinator, topology: dict[str, Any], clients: int, here: list[str],
        at_sites: list[str]) -> None:
    beat(coordinator, "site-a", "site-b", "site-c")
    job_id = coordinator.submit("ann", job_yaml(clients, topology=topology), None)
    job = coordinator.store.job(job_id)
    assert job is not None
    assert coordinator.own_actors(job) == here
    offers = coordinator.store.assignments(job_id=job_id)
    assert [(a["actor"], a["site"]) for a in offers] == list(
        zip(at_sites, ["site-a", "site-b", "site-c"], strict=False))


def test_a_job_with_more_data_holders_than_sites_is_refused(coordinator: Coordinator) -> None:
    beat(coordinator, "site-a", "site-b")
    with pytest.raises(Refused, match=r"the job has 3 data holders \(swarm: client-000, "
                                      r"client-001, client-002\) and needs as many distinct "
                                      r"sites"):
        coordinator.submit("ann", job_yaml(3, topology={"type": "swarm"}), None)


@pytest.mark.parametrize(("key", "value", "error"), [
    ("database", "mysql://db/x", "database: expected a postgresql:// URL, got 'mysql://db/x' "
                                 "(leave the key out for SQLite in state_dir)"),
    ("queue_timeout", 0, "queue_timeout: expected seconds > 0, got 0"),
])
def test_coordinator_yaml_mistakes_are_one_line_naming_the_key(
        tmp_path: Path, key: str, value: Any, error: str) -> None:
    from foedus.certs import create_deployment_certs

    certs = create_deployment_certs(tmp_path / "certs", [])
    path = tmp_path / "coordinator.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": "state", "admin_token_file": "admin.token", key: value,
        "tls": {"ca": str(certs.ca), "cert": str(certs.server_cert),
                "key": str(certs.server_key)}}))
    with pytest.raises(ConfigError) as caught:
        CoordinatorConfig.load(path)
    assert str(caught.value) == error


def test_the_server_process_starts_at_submit_and_trains_once_every_site_accepted(
        coordinator: Coordinator, launcher: Launcher) -> None:
    beat(coordinator, "site-a", "site-b", "site-c")
    tree = {"type": "hierarchical", "params": {"tree": [
        {"edge": "north", "children": ["client-000", "client-001"]}, "client-002"]}}
    job_id = coordinator.submit("ann", job_yaml(3, topology=tree), None)
    [process] = launcher.started  # started at once, to import while the sites answer
    args = process.args
    assert args[args.index("--actors") + 1] == "server,north"
    go = Path(args[args.index("--start-when") + 1])
    assert job_of(coordinator, job_id).server_pid == process.pid
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    assert not go.exists() and job_of(coordinator, job_id).state == "queued"
    answer(coordinator, job_id, "accepted", "site-c")
    coordinator.tick()
    assert go.exists()  # the gate opens: no second process
    assert len(launcher.started) == 1 and job_of(coordinator, job_id).state == "running"


def test_a_refused_jobs_waiting_server_process_is_stopped(
        coordinator: Coordinator, launcher: Launcher) -> None:
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(), None)
    answer(coordinator, job_id, "refused", "site-b")
    coordinator.tick()
    assert job_of(coordinator, job_id).state == "failed"
    process = launcher.started[0]
    # sent SIGTERM, and reaped on a later tick, never waited for in the API's event loop
    assert coordinator.servers == {} and coordinator.stopping == [process.pid]
    assert process.returncode is None
    process.returncode = -15  # it exits
    coordinator.tick()
    assert coordinator.stopping == []


def test_a_running_job_whose_site_actors_all_failed_fails_at_once(
        coordinator: Coordinator, launcher: Launcher) -> None:
    # both sites' clients exited with status 2 (their catalog's data file is missing): the
    # job used to stay running while its server waited out each round's timeout (minutes)
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(), None)
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    assert job_of(coordinator, job_id).state == "running"
    why = "exit status 2: foedus: error: data: data file '/data/a.csv' does not exist"
    coordinator.store.set_assignment(job_id, "site-a", "client-000", "failed", why)
    coordinator.tick()
    assert job_of(coordinator, job_id).state == "running"  # one client left: its rounds go on
    coordinator.store.set_assignment(job_id, "site-b", "client-001", "failed", why)
    coordinator.tick()
    job = job_of(coordinator, job_id)
    assert (job.state, job.reason) == (
        "failed", f"every site's actor failed; client-000 at site site-a: {why}")
    assert coordinator.stopping == [launcher.started[0].pid]  # its server is stopped


def test_a_server_that_could_not_start_says_it_was_the_servers_problem(
        coordinator: Coordinator, launcher: Launcher) -> None:
    # the coordinator's own catalog entry names a missing file: the reason used to be the
    # bare "data: data file ... does not exist", read by submitters as their sites' data
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(), None)
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    (coordinator.job_dir(job_id) / "result.json").write_text(json.dumps(
        {"status": 2, "error": "data: data file '/srv/test.csv' does not exist"}))
    coordinator.tick()
    job = job_of(coordinator, job_id)
    assert (job.state, job.reason) == ("failed", "the job's server at the coordinator could "
                                       "not start: data: data file '/srv/test.csv' does not "
                                       "exist")


def test_each_jobs_start_and_end_are_logged_for_the_operator(
        coordinator: Coordinator, caplog: pytest.LogCaptureFixture) -> None:
    # with `foedus -v coordinator` the log said only "submitted": an operator tailing it never
    # saw a job start or fail
    caplog.set_level(logging.INFO, logger="foedus.federation.coordinator")
    beat(coordinator, "site-a", "site-b")
    job_id = coordinator.submit("ann", job_yaml(), None)
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    coordinator.cancel(job_of(coordinator, job_id), "ann")
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"job {job_id} running: server started (pid ") for m in said)
    assert f"job {job_id} cancelled: cancelled by ann" in said


def test_at_most_a_few_queued_jobs_hold_a_waiting_server_process(
        coordinator: Coordinator, launcher: Launcher) -> None:
    beat(coordinator, "site-a", "site-b")
    jobs = [coordinator.submit("ann", job_yaml(), None) for _ in range(PRESTART_MAX + 2)]
    assert len(launcher.started) == PRESTART_MAX
    late = jobs[-1]
    answer(coordinator, late, "accepted", "site-a", "site-b")
    coordinator.tick()  # the job queued beyond them starts its process once accepted
    assert len(launcher.started) == PRESTART_MAX + 1
    assert "--start-when" not in launcher.started[-1].args
    assert job_of(coordinator, late).state == "running"


def test_a_pid_file_tells_the_jobs_server_from_a_recycled_pid(tmp_path: Path) -> None:
    # a process forked by the warm process has the zygote's command line: its start time,
    # in the job's pid file, is what says it is still the job's server
    me = os.getpid()
    started = start_time(me)
    assert started is not None
    (tmp_path / PID_FILE).write_text(json.dumps({"pid": me, "started": started}))
    assert _pid_runs(me, "not-in-the-command-line", tmp_path)
    (tmp_path / PID_FILE).write_text(json.dumps({"pid": me, "started": started + 1}))
    assert not _pid_runs(me, "not-in-the-command-line", tmp_path)  # same pid, another process


def test_a_warm_coordinator_forks_the_server_and_a_restarted_one_opens_its_gate(
        coordinator: Coordinator, clock: Clock, launcher: Launcher) -> None:
    warm = Coordinator(coordinator.config, clock=clock, launch=launcher, warm=True)
    restarted: Coordinator | None = None
    try:
        assert warm.zygote is not None and warm.zygote.wait_ready(120)
        beat(warm, "site-a", "site-b")
        job_id = warm.submit("ann", job_yaml(), None)
        assert launcher.started == []  # forked from the warm process, not started cold
        server = warm.servers[job_id]
        assert job_id.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        # the coordinator restarts (a new one on the same state): the gated process is still
        # the job's server, known by its pid file, so its gate opens and no second one starts
        restarted = Coordinator(coordinator.config, clock=clock, launch=launcher)
        answer(restarted, job_id, "accepted", "site-a", "site-b")
        restarted.tick()
        assert launcher.started == [] and (warm.job_dir(job_id) / "go").exists()
        opened = job_of(restarted, job_id)
        assert opened.state == "running", (opened.reason, restarted.store.events(job_id))
        restarted.cancel(job_of(restarted, job_id), "ann")  # stopped by its process group
        server.wait(timeout=60)  # its exit status, from the file the warm process writes
        assert not _pid_runs(server.pid, job_id, warm.job_dir(job_id))
    finally:
        if restarted is not None:
            restarted.stop_all()
        warm.stop_all()


def test_a_failure_quoting_a_job_files_password_is_logged_and_shown_without_it(
        coordinator: Coordinator, caplog: pytest.LogCaptureFixture) -> None:
    # an actor's error can quote the setting that failed; the job file's password is hidden
    # from the coordinator's log as from every viewer
    caplog.set_level(logging.INFO, logger="foedus.federation.coordinator")
    beat(coordinator, "site-a", "site-b")
    transport = {"type": "mqtt", "params": {"host": "127.0.0.1", "port": 1,
                                            "password": "hunter2-of-the-broker"}}
    job_id = coordinator.submit("ann", job_yaml(topology={"type": "swarm"},
                                                transport=transport), None)
    answer(coordinator, job_id, "accepted", "site-a", "site-b")
    coordinator.tick()
    actor = coordinator.store.assignments(job_id=job_id)[0]["actor"]
    coordinator.store.set_assignment(job_id, "site-a", actor, "failed",
                                     "broker refused user 'x' with 'hunter2-of-the-broker'")
    coordinator.tick()
    job = job_of(coordinator, job_id)
    assert job.state == "failed"
    assert job.public()["reason"] == (f"{actor} at site site-a failed: broker refused user "
                                      "'x' with '***'")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"job {job_id} failed: {actor} at site site-a failed" in logged
    assert "hunter2" not in logged
