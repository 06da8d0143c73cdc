"""A federation as real processes on loopback: a coordinator (`foedus coordinator`) keeping its
state in a real PostgreSQL server, two site agents (`foedus site`) with certificates made here
by `foedus.certs`, jobs over a real Mosquitto broker, and the user commands (`foedus
submit|jobs|logs|cancel|sites|users`) as processes too. (The coordinator on its default SQLite
is run end to end by `foedus federation demo`, a README command the docs tests execute.)

Every wait polls the coordinator's API with a deadline; every process started here is stopped
by its pid at the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from foedus.codec import decode
from foedus.config.spec import JobSpec
from foedus.federation.ledger import Charge, Mechanism, epsilon_of
from foedus.federation.openapi import ROUTES
from foedus.runner import run_job_sync
from tests.federation.federation_fixtures import (
    BUDGET,
    DP_STAGE,
    SITES,
    Federation,
    ended,
    federation,
    job_file,
    submit,
    wait_for,
)
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["federation", "mosquitto", "mqtt_certs"]  # fixtures used by name

pytestmark = pytest.mark.integration

def test_a_job_runs_at_two_sites_and_learns_what_foedus_run_learns(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    path = job_file(mosquitto, tmp_path, "digits-fed", rounds=3)
    job_id = submit(federation, path)
    assert job_id.startswith("digits-fed-")
    job = wait_for(lambda: ended(federation, job_id), 240, f"job {job_id} to end",
                   federation.root / "state" / "jobs" / job_id / "server.log")
    assert job["state"] == "finished", job
    assert sorted(a["site"] for a in job["assignments"]) == list(SITES)
    with federation.api() as api:
        rounds = api.get(f"/v1/jobs/{job_id}/rounds").json()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["accepted"] == 2 for r in rounds)

    spec = JobSpec.from_dict({**yaml.safe_load(path.read_text()), "transport": "local"})
    alone = run_job_sync(spec).summary()["final_accuracy"]
    assert job["result"]["final_accuracy"] == pytest.approx(alone, abs=1e-9)
    assert alone > 0.85

    table = federation.cli("jobs")
    assert table.returncode == 0 and job_id in table.stdout and "finished" in table.stdout
    logs = federation.cli("logs", job_id)
    assert logs.returncode == 0 and "round   3  ok  updates 2" in logs.stdout, logs.stdout
    sites = federation.cli("sites")
    assert "site-a  online" in sites.stdout and "site-b  online" in sites.stdout
    # each client actor ran at its site from the catalog's data, and exited cleanly
    wait_for(lambda: all(a["state"] == "done" for a in federation.job(job_id)["assignments"]),
             60, "both client actors to exit cleanly")
    site_job = yaml.safe_load(
        (federation.root / "site-b-state" / "jobs" / job_id / "job.yaml").read_text())
    assert site_job["data"]["dataset"] == "digits"


def test_a_job_a_site_refuses_fails_with_the_sites_reason(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    job_id = submit(federation, job_file(mosquitto, tmp_path, "too-long", rounds=80))
    job = wait_for(lambda: ended(federation, job_id), 60, "the refusal")
    assert job["state"] == "failed"
    reason = "site site-b refused client-001: 80 rounds is more than this site allows (60)"
    assert job["reason"] == reason
    table = federation.cli("jobs")
    assert reason in table.stdout
    # the site that had accepted is told to stop its actor, and does
    wait_for(lambda: all(a["state"] in ("stopped", "refused", "failed")
                         for a in federation.job(job_id)["assignments"]), 60,
             "site-a to stop its actor of the refused job")


def test_roles_a_viewer_may_look_but_not_submit(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    made = federation.cli("users", "add", "vera", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert federation.cli("jobs", token=token).returncode == 0
    refused = federation.cli("submit", str(job_file(mosquitto, tmp_path, "x", 2)), token=token)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("foedus: error: refused (403): user 'vera' is a viewer; "
                                      "this needs the submitter role")
    bad = federation.cli("jobs", token="not-a-token")
    assert bad.returncode == 2 and "unknown token" in bad.stderr
    assert federation.cli("users", "add", "x", "--role", "admin", token=token).returncode == 2


def test_a_site_is_its_certificate(federation: Federation, tmp_path: Path) -> None:
    body = {"version": "x", "offers": {}, "actors": []}
    ca = ssl.create_default_context(cafile=str(federation.certs.ca))
    with httpx.Client(base_url=federation.url, verify=ca) as anonymous:
        answer = anonymous.post("/v1/site/heartbeat", json=body)
    assert answer.status_code == 401 and "client certificate" in answer.json()["error"]
    # a certificate named site-a, but from another CA: the TLS handshake itself fails
    other = trustme.CA()
    forged = other.issue_cert("site-a")
    context = ssl.create_default_context(cafile=str(federation.certs.ca))
    forged.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "forged.pem"))
    context.load_cert_chain(str(tmp_path / "forged.pem"))
    with httpx.Client(base_url=federation.url, verify=context) as impostor, \
            pytest.raises(httpx.TransportError):
        impostor.post("/v1/site/heartbeat", json=body)
    # a real site's certificate acts as that site only, whatever the request says
    context = ssl.create_default_context(cafile=str(federation.certs.ca))
    cert, key = federation.certs.clients["site-a"]
    context.load_cert_chain(str(cert), str(key))
    with httpx.Client(base_url=federation.url, verify=context) as site_a:
        refused = site_a.post("/v1/site/answer", json={
            "job_id": "nope", "actor": "client-000", "accept": True, "site": "site-b"})
    assert refused.status_code == 404 and "to site site-a" in refused.json()["error"]


def test_cancel_stops_the_server_and_every_actor(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    # 100 epochs a round: tens of seconds in all, so the job cannot end before the cancel
    job_id = submit(federation, job_file(mosquitto, tmp_path, "long", rounds=50,
                                         clients={"count": 2, "epochs": 100}))
    wait_for(lambda: federation.job(job_id)["rounds_done"] >= 1, 180, "a first round",
             federation.root / "state" / "jobs" / job_id / "server.log")
    server_pid = federation.job(job_id)["server_pid"]
    assert Path(f"/proc/{server_pid}").exists()
    done = federation.cli("cancel", job_id)
    assert done.returncode == 0 and done.stdout.strip() == "cancelled", done.stderr
    job = federation.job(job_id)
    assert job["state"] == "cancelled" and job["reason"] == "cancelled by admin"
    wait_for(lambda: all(a["state"] == "stopped" for a in federation.job(job_id)["assignments"]),
             60, "every site to stop its actor")
    again = federation.cli("cancel", job_id)
    assert again.returncode == 2 and "already ended (cancelled)" in again.stderr
    assert not Path(f"/proc/{server_pid}").exists()  # the coordinator stopped and reaped it


def test_the_api_is_described_at_openapi_json(federation: Federation) -> None:
    with federation.api() as api:
        spec = api.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    described = {(m.lower(), p) for p, ops in spec["paths"].items() for m in ops}
    assert described == {(m.lower(), p) for m, p, _, _ in ROUTES}


def test_a_restarted_coordinator_loses_no_job(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    job_id = submit(federation, job_file(mosquitto, tmp_path, "survivor", rounds=6))
    wait_for(lambda: federation.job(job_id)["rounds_done"] >= 1, 180, "a first round")
    federation.stop("coordinator", signal.SIGKILL)  # no chance to save anything
    federation.start_coordinator()
    job = wait_for(lambda: ended(federation, job_id), 240, f"job {job_id} to end",
                   federation.root / "coordinator.log")
    assert job["state"] == "finished", job
    with federation.api() as api:
        rounds = api.get(f"/v1/jobs/{job_id}/rounds").json()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert job["result"]["rounds"] == 6


def test_a_tree_and_a_swarm_run_side_by_side_placed_by_their_topologies(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    tree_file = job_file(mosquitto, tmp_path, "tree", rounds=2, topology={
        "type": "hierarchical",
        "params": {"tree": [{"edge": "north", "children": ["client-000"]}, "client-001"]}})
    swarm_file = job_file(mosquitto, tmp_path, "swarm", rounds=2, topology={"type": "swarm"})
    with federation.api() as api:  # both at once, through the API (the CLI is tested above)
        api.timeout = httpx.Timeout(60)  # as the CLI's: a loaded machine answers slowly
        answers = [api.post("/v1/jobs", json={"job_yaml": path.read_text()})
                   for path in (tree_file, swarm_file)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    tree, swarm = (r.json()["id"] for r in answers)
    for job_id in (tree, swarm):
        job = wait_for(functools.partial(ended, federation, job_id), 180,
                       f"job {job_id} to end",
                       federation.root / "state" / "jobs" / job_id / "server.log")
        assert job["state"] == "finished", job
        assert sorted((a["actor"], a["site"]) for a in job["assignments"]) == [
            ("client-000", "site-a"), ("client-001", "site-b")]
    tree_job = federation.job(tree)
    # the server and the edge hold no data: they ran at the coordinator, in one process
    assert any(e["text"].startswith("server, north started here") for e in tree_job["events"])
    with federation.api() as api:
        rounds = api.get(f"/v1/jobs/{tree}/rounds").json()["rounds"]
    assert [(r["round"], r["accepted"]) for r in rounds] == [(1, 2), (2, 2)]
    assert tree_job["result"]["final_accuracy"] > 0.8
    # a swarm has no actor without data: it ends when its peers at the sites have
    swarm_job = federation.job(swarm)
    assert swarm_job["server_pid"] is None
    assert all(a["state"] == "done" for a in swarm_job["assignments"])
    # ... and its rounds are the job's all the same: its first peer's, sent by its site
    with federation.api() as api:
        swarm_rounds = api.get(f"/v1/jobs/{swarm}/rounds").json()["rounds"]
    assert [r["round"] for r in swarm_rounds] == [1, 2]
    assert swarm_job["rounds_done"] == 2


@dataclass
class Rejoined:
    """A DP job during which both sites were SIGKILLed and restarted: site-a's actor was
    killed too (so it was started again), site-b's survived (so it was adopted)."""

    job_id: str
    job: dict[str, Any]
    pids_before: dict[str, int]
    pids_after: dict[str, int]


def reachable(check: Callable[[], Any]) -> Callable[[], Any]:
    """``check``, reading a coordinator too busy to answer in time (a loaded machine) as
    'not yet' rather than as a failure."""
    def quietly() -> Any:
        try:
            return check()
        except httpx.TransportError:
            return None
    return quietly


def all_online(fed: Federation) -> bool:
    with fed.api() as api:
        sites = api.get("/v1/sites").json()["sites"]
    return sorted(s["name"] for s in sites if s["online"]) == list(SITES)


def actor_pid(fed: Federation, site: str, job_id: str, actor: str) -> int:
    record = fed.root / f"{site}-state" / "jobs" / job_id / f"{actor}.json"
    pid: int = json.loads(record.read_text())["pid"]
    return pid


@pytest.fixture(scope="module")
def rejoined(federation: Federation, mosquitto: Mosquitto,
             tmp_path_factory: pytest.TempPathFactory) -> Rejoined:
    tmp = tmp_path_factory.mktemp("rejoin")
    # 30 epochs a round: 3 rounds are still to come when the sites are killed
    path = job_file(
        mosquitto, tmp, "dp-rejoin", rounds=4, clients={"count": 2, "epochs": 30},
        round_timeout=300,  # the round waits for the restarted client, however slow
        data={"dataset": "digits-dp", "partition": "iid"}, pipeline=[DP_STAGE])
    # The coordinator checks a job on its event loop, and the first DP job imports
    # dp_accounting there: seconds of CPU, on a loaded machine more than heartbeat_timeout,
    # after which the sites look offline. A dry run pays for that import first.
    with federation.api() as api:
        api.timeout = httpx.Timeout(120)
        api.post("/v1/jobs", params={"dry_run": "1"}, json={"job_yaml": path.read_text()})
    wait_for(reachable(lambda: all_online(federation)), 60, "both sites online")
    job_id = submit(federation, path)
    progress = federation.root / "site-a-state" / "jobs" / job_id / "client-000.progress"
    wait_for(lambda: progress.exists() and '"update": true' in progress.read_text(), 180,
             "site-a's first update", federation.root / "state" / "jobs" / job_id /
             "server.log")
    actors = {"site-a": "client-000", "site-b": "client-001"}
    before = {s: actor_pid(federation, s, job_id, a) for s, a in actors.items()}
    federation.stop("site-a", signal.SIGKILL)
    os.kill(before["site-a"], signal.SIGKILL)  # its actor dies with it (a machine crash)
    federation.stop("site-b", signal.SIGKILL)  # its actor outlives it
    for site in actors:
        federation.start_site(site)
    job = wait_for(reachable(lambda: ended(federation, job_id)), 180, f"job {job_id} to end",
                   federation.root / "site-a.log")
    after = {s: actor_pid(federation, s, job_id, a) for s, a in actors.items()}
    return Rejoined(job_id, job, before, after)


def test_a_site_killed_and_restarted_rejoins_its_jobs(
        federation: Federation, rejoined: Rejoined) -> None:
    assert rejoined.job["state"] == "finished", rejoined.job
    assert rejoined.pids_after["site-a"] != rejoined.pids_before["site-a"]  # started again
    assert rejoined.pids_after["site-b"] == rejoined.pids_before["site-b"]  # adopted
    with federation.api() as api:
        rounds = api.get(f"/v1/jobs/{rejoined.job_id}/rounds").json()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]  # none lost, none doubled
    assert all(r["accepted"] == 2 for r in rounds), rounds
    wait_for(reachable(lambda: all(a["state"] == "done" for a in federation.job(
        rejoined.job_id)["assignments"])), 60, "both actors to be reported done")


def test_a_dp_job_is_charged_audited_and_its_model_downloaded(
        federation: Federation, rejoined: Rejoined, mosquitto: Mosquitto,
        tmp_path: Path) -> None:
    spent = epsilon_of([Charge.planned([Mechanism("", 5.0, 2, 2, "poisson", False)], 4)],
                       BUDGET["delta"])
    with federation.api() as api:  # the site's ledger and audit log, as the coordinator shows
        ledger = wait_for(lambda: (api.get("/v1/sites/site-a/ledger").json()
                                   .get("datasets", {}).get("digits-dp", {})
                                   .get("spent", 0)), 60, "site-a's settled ledger")
        assert ledger == pytest.approx(spent)
        audit = {r["job_id"]: r for r in api.get("/v1/sites/site-a/audit").json()["jobs"]}
    row = audit[rejoined.job_id]
    assert (row["decision"], row["submitter"], row["stages"], row["dataset"]) == (
        "accepted", "admin", ["central-dp"], "digits-dp")
    assert row["job_sha256"] == hashlib.sha256(rejoined.job["job_yaml"].encode()).hexdigest()
    assert row["epsilon_requested"] == pytest.approx(spent)

    # a second such job would pass the budget: each site refuses it, naming the figures
    with federation.api() as api:
        again = api.post("/v1/jobs", json={"job_yaml": job_file(
            mosquitto, tmp_path, "dp-again", rounds=4, pipeline=[DP_STAGE],
            data={"dataset": "digits-dp", "partition": "iid"}).read_text()}).json()["id"]
    refused = wait_for(reachable(lambda: ended(federation, again)), 60,
                       "the budget's refusal")
    assert refused["state"] == "failed"
    assert re.fullmatch(
        rf"site site-[ab] refused client-00[01]: dataset 'digits-dp': privacy budget epsilon 2 "
        rf"at delta 1e-05; spent {spent:.3f}, this job requests {spent:.3f} \(4 rounds\), "
        r"which would bring it to 2\.484", refused["reason"]), refused["reason"]
    wait_for(lambda: again in federation.cli("site-audit", "--config", str(
        federation.root / "site-a.yaml")).stdout, 30, "the refusal in site-a's audit log")

    out = tmp_path / "model.foedus"
    done = federation.cli("result", rejoined.job_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    model = decode(out.read_bytes())
    assert (model.header.job_id, model.round) == (rejoined.job_id, 4)
    assert set(model.params) and all(v.size for v in model.params.values())
    with federation.api() as api:
        not_done = api.get(f"/v1/jobs/{again}/model")
    assert not_done.status_code == 409
    assert not_done.json()["error"].startswith(f"job {again} is failed (site site-")


def test_a_job_files_password_reaches_the_sites_but_no_viewer(
        federation: Federation, mosquitto: Mosquitto, tmp_path: Path) -> None:
    password = "hunter2-of-the-broker"
    path = job_file(mosquitto, tmp_path, "secretive", rounds=1, transport={
        "type": "mqtt", "params": {"host": "127.0.0.1", "port": mosquitto.plain_port,
                                   "username": "fl", "password": password}})
    warning = ("foedus: warning: the job file holds a literal secret "
               "(transport.params.password); every site receives it, viewers see '***'")
    checked = federation.cli("submit", "--dry-run", str(path))
    assert checked.returncode == 0 and checked.stderr.startswith(warning + "\n"), checked
    done = federation.cli("submit", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == warning
    job_id = done.stdout.strip()
    job = wait_for(lambda: ended(federation, job_id), 120, f"job {job_id} to end",
                   federation.root / "state" / "jobs" / job_id / "server.log")
    assert job["state"] == "finished", job  # the sites ran it with the password

    token = federation.cli("users", "add", "vic", "--role", "viewer").stdout.strip()
    with federation.api(token) as api:
        one = api.get(f"/v1/jobs/{job_id}").json()
        listed = api.get("/v1/jobs").json()
    with httpx.Client(base_url=federation.url, verify=ssl.create_default_context(
            cafile=str(federation.certs.ca)), timeout=60) as browser:
        browser.post("/console/login", data={"token": token, "next": f"/console/jobs/{job_id}"})
        page = browser.get(f"/console/jobs/{job_id}")
        jobs_page = browser.get("/console/jobs")
    assert page.status_code == 200 and "password: &#39;***&#39;" in page.text, page.text
    shown = {"GET /v1/jobs/{id}": json.dumps(one), "GET /v1/jobs": json.dumps(listed),
             "console job page": page.text, "console jobs page": jobs_page.text,
             "foedus jobs --json": federation.cli("jobs", "--json", token=token).stdout,
             "foedus logs --json": federation.cli("logs", job_id, "--json", token=token).stdout}
    assert [where for where, text in shown.items() if password in text] == []
    assert yaml.safe_load(one["job_yaml"])["transport"]["params"] == {
        "host": "127.0.0.1", "port": mosquitto.plain_port, "username": "fl", "password": "***"}

    # each site ran it with the password, and its audit log's hash of the exact text it was
    # offered is the one viewers see (the site's own copy has its catalog's data filled in)
    site_text = (federation.root / "site-a-state" / "jobs" / job_id / "job.yaml").read_text()
    assert yaml.safe_load(site_text)["transport"]["params"]["password"] == password
    with federation.api() as api:
        audit = {r["job_id"]: r for r in api.get("/v1/sites/site-a/audit").json()["jobs"]}
    assert audit[job_id]["job_sha256"] == one["job_sha256"]
    # the job files on disk that hold the password are the service user's alone
    server_file = federation.root / "state" / "jobs" / job_id / "server.yaml"
    assert yaml.safe_load(server_file.read_text())["transport"]["params"]["password"] == password
    modes = {str(p.relative_to(federation.root)): oct(p.stat().st_mode & 0o777)
             for p in (server_file, *(federation.root / f"{s}-state" / "jobs" / job_id / "job.yaml"
                                      for s in SITES))}
    assert set(modes.values()) == {"0o600"}, modes
