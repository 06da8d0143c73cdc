"""The federation's user commands (``foedus users|jobs|submit|result``) against a real
coordinator served over HTTPS on loopback, in this process: what a user who gets something
wrong sees. Every mistake is one line naming what to fix, with exit status 2."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from foedus.certs import create_deployment_certs
from foedus.cli import main
from foedus.core.errors import ConfigError, require
from foedus.federation import cli as fedcli
from foedus.federation.actor import MODEL_FILE
from foedus.federation.cli import Unreachable
from foedus.federation.coordinator import Coordinator, CoordinatorConfig
from foedus.federation.demo import ADMIN_TOKEN, LocalFederation, run_demo
from foedus.federation.site import SiteConfig, run_site
from foedus.transport.tls import TLSConfig
from tests.waiting import until


@dataclass
class Served:
    fed: LocalFederation
    coordinator: Coordinator
    loop: asyncio.AbstractEventLoop  # the coordinator's: its state changes run there


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    web = require("aiohttp.web", "federation")
    fed = LocalFederation.create(tmp_path, 2)
    coordinator = Coordinator(CoordinatorConfig.load(tmp_path / "coordinator.yaml"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> object:
        runner = web.AppRunner(coordinator.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", fed.coordinator_port,
                          ssl_context=coordinator.config.tls.server_context()).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    for name, value in (("FOEDUS_COORDINATOR", fed.url), ("FOEDUS_TOKEN", ADMIN_TOKEN),
                        ("FOEDUS_CA", str(tmp_path / "certs" / "ca.pem"))):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FOEDUS_TOKEN_FILE", raising=False)
    try:
        yield Served(fed, coordinator, loop)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        coordinator.stop_all()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out.strip(), err.strip()


def test_users_add_never_re_keys_an_existing_user_unless_asked(
        served: Served, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    status, token, _ = run(capsys, "users", "add", "vera", "--role", "viewer")
    assert status == 0 and token
    # the name is taken: refused, and vera's token still works (it used to be replaced
    # silently, locking her out and changing her role)
    status, _, err = run(capsys, "users", "add", "vera", "--role", "submitter")
    assert status == 2
    assert err == ("foedus: error: refused (409): user 'vera' exists (a viewer); re-keying "
                   "them (a new token, the old one stops working) needs replace (`foedus "
                   "users add vera --role submitter --replace`)")
    monkeypatch.setenv("FOEDUS_TOKEN", token)
    assert run(capsys, "jobs")[0] == 0
    monkeypatch.setenv("FOEDUS_TOKEN", ADMIN_TOKEN)
    status, new, err = run(capsys, "users", "add", "vera", "--role", "submitter", "--replace")
    assert status == 0 and new and new != token
    assert err == "foedus: vera's earlier token no longer works (was a viewer, now a submitter)"
    monkeypatch.setenv("FOEDUS_TOKEN", token)
    status, _, err = run(capsys, "jobs")
    assert status == 2
    assert err == ("foedus: error: refused (401): unknown token: the coordinator has no user "
                   "with $FOEDUS_TOKEN")


def test_where_the_coordinator_is_and_who_you_are_mistakes_are_one_line(
        served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, "jobs", "--ca", str(tmp_path / "no-such-ca.pem"))
    assert status == 2
    assert err == (f"foedus: error: --ca: cannot load '{tmp_path / 'no-such-ca.pem'}' as a CA "
                   "certificate: No such file or directory")
    other = create_deployment_certs(tmp_path / "other", [])
    status, _, err = run(capsys, "jobs", "--ca", str(other.ca))
    assert status == 2 and err.startswith("foedus: error: cannot reach the coordinator at ")
    assert err.endswith(f"(its certificate is not signed by the CA given: '{other.ca}'; pass "
                        "the federation's CA with --ca or $FOEDUS_CA)")
    status, _, err = run(capsys, "jobs", "--coordinator",
                         served.fed.url.replace("https", "http"))
    assert status == 2
    assert err == ("foedus: error: --coordinator: expected an https:// URL (the coordinator "
                   f"serves HTTPS only), got '{served.fed.url.replace('https', 'http')}'")
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-a-token\n")
    status, _, err = run(capsys, "jobs", "--token-file", str(wrong))
    assert status == 2
    assert err == ("foedus: error: refused (401): unknown token: the coordinator has no user "
                   f"with the token in '{wrong}' (--token-file or $FOEDUS_TOKEN_FILE)")


def test_a_site_that_does_not_trust_the_coordinator_ends_at_once_naming_tls_ca(
        served: Served, tmp_path: Path) -> None:
    # it used to retry forever, printing CERTIFICATE_VERIFY_FAILED, as if the coordinator
    # were down
    other = create_deployment_certs(tmp_path / "other", [])
    config = SiteConfig.load(tmp_path / "site-1.yaml")
    config = replace(config, tls=TLSConfig(str(other.ca), str(config.tls.cert),
                                           str(config.tls.key)), warm=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(ConfigError, match=(
                rf"^tls.ca: the coordinator at {served.fed.url} presented a certificate that "
                rf"'{other.ca}' does not verify \(.*CERTIFICATE_VERIFY_FAILED.*\); tls.ca must "
                r"be the federation's CA")):
            run_site(config)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_submit_wait_follows_the_job_and_its_status_says_how_it_ended(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    # without --wait, submit says 0 once queued, and a site's refusal comes after: a script
    # could not tell. With it, the exit status is the job's outcome
    coordinator = served.coordinator
    for name in served.fed.sites:
        coordinator.store.heartbeat(name, "test", {"catalog": ["digits"]})
    outcome: list[int] = []
    follower = threading.Thread(target=lambda: outcome.append(
        main(["submit", str(served.fed.job(2)), "--wait"])))
    follower.start()
    try:
        asyncio.run(until(lambda: bool(coordinator.store.jobs()), "the job queued"))
        [job] = coordinator.store.jobs()

        async def refuse() -> None:  # what site-2's answer does, in the coordinator's loop
            coordinator.store.set_assignment(job.id, "site-2", "client-001", "refused",
                                             "80 rounds is more than this site allows (60)")
            coordinator.tick()
        asyncio.run_coroutine_threadsafe(refuse(), served.loop).result(30)
    finally:
        follower.join(60)
    assert outcome == [1]
    out, err = capsys.readouterr()
    assert out.strip() == job.id
    reason = "site site-2 refused client-001: 80 rounds is more than this site allows (60)"
    assert f"failed: {reason}" in err  # the event, as it came
    assert err.strip().splitlines()[-1] == f"foedus: job {job.id} failed: {reason}"


def test_a_job_file_that_is_not_yaml_is_refused_naming_the_file_and_line(
        served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # the coordinator's refusal quoted the parser on one line: 'while parsing a flow sequence
    # in "<unicode string>", line 2, column 9: ...'
    bad = tmp_path / "bad.yaml"
    bad.write_text("job_id: bad\nrounds: [3\n")
    status, _, err = run(capsys, "submit", str(bad))
    assert status == 2
    assert err == (f"foedus: error: {bad}: not valid YAML at line 3, column 1: expected ',' or "
                   "']', but got '<stream end>'")
    bad.write_text("- rounds: 3\n")
    status, _, err = run(capsys, "submit", str(bad))
    assert status == 2
    assert err == (f"foedus: error: {bad}: expected a job file (a mapping of settings such as "
                   "rounds, data, model), got list")
    assert not served.coordinator.store.jobs()


def test_ledger_shows_a_sites_budgets_as_its_heartbeat_reported_them(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    charge = [[{"stage": "pipeline[0]:central-dp", "noise_multiplier": 5.0}, 4]]
    served.coordinator.reports.receive("site-1", {"ledger": {"digits-dp": {
        "budget": {"epsilon": 2.0, "delta": 1e-5}, "spent": 1.6937, "reserved_and_spent": 1.6937,
        "jobs": [{"job_id": "dp-1", "state": "settled", "rounds": 4, "epsilon": 1.6937,
                  "note": "exited", "charge": charge}]}}})
    status, out, _ = run(capsys, "ledger", "site-1")
    assert status == 0
    assert [line.split() for line in out.splitlines()] == [
        ["DATASET", "BUDGET", "SPENT", "WITH", "RESERVED"],
        ["digits-dp", "epsilon", "2", "at", "delta", "1e-05", "1.694", "1.694"],
        [],
        ["DATASET", "JOB", "STATE", "ROUNDS", "EPSILON", "NOTE"],
        ["digits-dp", "dp-1", "settled", "4", "1.694", "exited"]]
    status, _, err = run(capsys, "ledger", "site-9")
    assert status == 2 and err == "foedus: error: refused (404): site 'site-9' has sent no ledger"


def test_submit_dry_run_says_which_sites_would_refuse_and_queues_nothing(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    store = served.coordinator.store
    store.heartbeat("site-1", "test", {"catalog": ["digits"], "policy": {"max_rounds": 100}})
    store.heartbeat("site-2", "test", {"catalog": ["digits"], "policy": {"max_rounds": 1}})
    status, out, err = run(capsys, "submit", str(served.fed.job(2)), "--dry-run")
    assert status == 1
    assert [line.split()[:3] for line in out.splitlines()] == [
        ["SITE", "STATE", "ACCEPTS"], ["site-1", "online", "yes"], ["site-2", "online", "no"]]
    assert "2 rounds is more than this site allows (1)" in out.splitlines()[2]
    assert "a site it would go to is expected to refuse it" in err
    assert not store.jobs()  # nothing queued
    store.heartbeat("site-2", "test", {"catalog": ["digits"], "policy": {"max_rounds": 5}})
    status, _, err = run(capsys, "submit", str(served.fed.job(2)), "--dry-run")
    assert status == 0 and "expected to accept it" in err
    assert not store.jobs()


def test_a_site_name_typo_names_the_sites_there_are(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    for name in served.fed.sites:
        served.coordinator.store.heartbeat(name, "test", {"catalog": ["digits"]})
    status, _, err = run(capsys, "submit", str(served.fed.job(2)), "--sites", "site-1,site-22")
    assert status == 2
    assert err == ("foedus: error: refused (409): no site named 'site-22' has ever connected "
                   "(known: site-1, site-2)")


def test_result_into_a_directory_that_is_not_there_is_one_line_and_writes_nothing(
        served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = served.coordinator.store
    store.add_job("done-1", "admin", "job_id: done-1\n", {}, str(tmp_path / "ck"))
    store.finish_job("done-1", "finished", None, {"rounds": 1})
    served.coordinator.job_dir("done-1").mkdir(parents=True)
    (served.coordinator.job_dir("done-1") / MODEL_FILE).write_bytes(b"model")
    out = tmp_path / "no-such-dir" / "model.foedus"
    status, _, err = run(capsys, "result", "done-1", "--out", str(out))
    assert status == 2
    assert err == (f"foedus: error: --out: cannot write '{out}': No such file or directory")
    status, said, _ = run(capsys, "result", "done-1", "--out", str(tmp_path / "model.foedus"))
    assert status == 0 and said.endswith("model.foedus: 5 bytes")
    assert (tmp_path / "model.foedus").read_bytes() == b"model"


@pytest.mark.parametrize(("command", "says"), [
    (["coordinator"], "Keys of coordinator.yaml: docs/federation.md"),
    (["site"], "A site started again rejoins its jobs"),
    (["submit"], "Exit status 0 means queued: the sites answer after"),
    (["users"], "viewer: lists jobs, sites, logs"),
    (["jobs"], "Exit status 0 on success; 2 with one line naming the reason"),
])
def test_each_commands_help_says_what_it_does_not_only_its_options(
        command: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert says in " ".join(capsys.readouterr().out.split())


def test_a_long_demo_is_not_refused_by_its_own_sites(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 'foedus federation demo --rounds 200' failed at once: its sites' policy allowed 100
    seen: list[dict[str, object]] = []

    async def demo(fed: LocalFederation, rounds: int, out: object) -> int:
        seen.append(yaml.safe_load((fed.root / "site-1.yaml").read_text())["policy"])
        return 0

    monkeypatch.setattr("foedus.federation.demo._demo", demo)
    assert run_demo(200, 2, keep=str(tmp_path / "fed")) == 0
    assert run_demo(3, 2, keep=str(tmp_path / "fed3")) == 0
    assert [p["max_rounds"] for p in seen] == [200, 100]


def test_submit_wait_rides_out_a_coordinator_restart(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # it used to end with 'cannot reach the coordinator' and exit status 2 while the job went
    # on: a restart (which loses no job) looked like a failure to the script waiting
    monkeypatch.setattr(fedcli, "WAIT_POLL_S", 0.01)
    job: dict[str, object] = {"id": "j-1", "state": "running", "reason": None,
                              "rounds_done": 0, "events": [], "result": None}
    answers: list[object] = [job, Unreachable("cannot reach the coordinator at x: refused"),
                             Unreachable("cannot reach the coordinator at x: refused"),
                             {**job, "state": "finished", "result": {"final_accuracy": 0.9}}]

    class Api:
        def call(self, method: str, path: str) -> object:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert fedcli._wait(Api(), "j-1") == 0  # type: ignore[arg-type]
    err = capsys.readouterr().err.splitlines()
    assert err == ["foedus: cannot reach the coordinator at x: refused; retrying for up to "
                   "120s (the job goes on)", "foedus: job j-1 finished (final accuracy 0.9000)"]
