"""The site agent's heartbeat loop against a coordinator played in process: what the agent
does when the coordinator's answers are not the happy path (an offer withdrawn before the
site answered, a coordinator that fails a request). No HTTP, no actor processes.
(tests/federation/test_federation.py runs the agent as a real process.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from foedus.certs import create_deployment_certs
from foedus.core.errors import ConfigError
from foedus.federation.policy import Policy, parse_catalog
from foedus.federation.settings import lock_state_dir
from foedus.federation.site import CoordinatorUnavailable, Site, SiteConfig, run_site
from foedus.transport.tls import TLSConfig

BUDGET = {"epsilon": 2.0, "delta": 1e-5}
DP_STAGE = {"type": "central-dp", "params": {"clients_per_round": 2, "clip_norm": 5.0,
                                             "noise_multiplier": 5.0}}


class Response:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code, self.body = status, body

    def json(self) -> Any:
        if isinstance(self.body, str):
            raise ValueError("not JSON")
        return self.body


class Coordinator:
    """Answers the site's posts as scripted: ``heartbeat`` with ``assignments``, ``answer``
    with ``answer_status`` (404: the offer was withdrawn, as the real one answers)."""

    def __init__(self) -> None:
        self.assignments: list[dict[str, Any]] = []
        self.answer_status = 200
        self.answer_lost = False
        self.heartbeat_status = 200
        self.answers: list[dict[str, Any]] = []

    def post(self, path: str, json: dict[str, Any]) -> Response:
        if path == "/v1/site/answer" and self.answer_lost:
            self.answers.append(json)  # taken, but the reply never reaches the site
            raise httpx.ReadTimeout("the connection broke")
        if path == "/v1/site/heartbeat":
            if self.heartbeat_status != 200:
                return Response(self.heartbeat_status, "500 Internal Server Error")
            return Response(200, {"assignments": self.assignments})
        self.answers.append(json)
        if self.answer_status == 404:
            return Response(404, {"error": f"no open offer of {json['actor']} of job "
                                           f"{json['job_id']} to site site-a"})
        return Response(self.answer_status, {"ok": True})

    def close(self) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Site, Coordinator]]:
    certs = create_deployment_certs(tmp_path / "certs", ["site-a"])
    config = SiteConfig(
        "https://127.0.0.1:1", tmp_path / "state",
        TLSConfig(str(certs.ca), str(certs.clients["site-a"][0]),
                  str(certs.clients["site-a"][1])),
        1.0, parse_catalog({"digits": {"dataset": "digits"},
                            "digits-dp": {"dataset": "digits", "budget": BUDGET}},
                           budgets=True),
        Policy.from_dict({"max_rounds": 5}))
    made = Site(config)
    made.http.close()
    fake = Coordinator()
    made.http = fake  # type: ignore[assignment]
    yield made, fake
    made.close()


def offer(job_id: str, rounds: int, **extra: Any) -> dict[str, Any]:
    job = {"job_id": job_id, "rounds": rounds, "data": {"dataset": "digits"},
           "clients": {"count": 2}, "model": {"type": "sklearn-sgd"},
           "transport": {"type": "mqtt", "params": {"host": "127.0.0.1", "port": 1}}, **extra}
    return {"job_id": job_id, "actor": "client-001", "site": "site-a", "state": "offered",
            "job_state": "queued", "owner": "admin", "job_yaml": yaml.safe_dump(job)}


def audit(site: Site) -> list[dict[str, Any]]:
    path = site.config.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_refusal_of_an_offer_withdrawn_meanwhile_does_not_stop_the_site(
        site: tuple[Site, Coordinator]) -> None:
    # two sites refuse the same job: the first refusal fails it and withdraws the other
    # site's offer, so the coordinator answers the second refusal 404. The site must go on
    # (it used to exit with "the coordinator refused /v1/site/answer", leaving the
    # federation one site short until someone restarted it)
    agent, coordinator = site
    coordinator.assignments = [offer("long-1", rounds=50)]
    coordinator.answer_status = 404
    agent.beat()
    assert coordinator.answers == [{"job_id": "long-1", "actor": "client-001",
                                    "accept": False,
                                    "reason": "50 rounds is more than this site allows (5)"}]
    assert audit(agent)[-1]["decision"] == "refused"
    # and the next heartbeat goes out as usual
    coordinator.assignments = []
    agent.beat()


def test_a_coordinator_that_fails_a_heartbeat_is_retried_not_fatal(
        site: tuple[Site, Coordinator]) -> None:
    # a 500 without JSON (an unexpected error in the coordinator, a proxy's error page) is
    # the coordinator's trouble, which the agent's loop retries, not the site's mistake
    agent, coordinator = site
    coordinator.heartbeat_status = 500
    with pytest.raises(CoordinatorUnavailable, match="answered 500"):
        agent.beat()


def test_an_acceptance_the_coordinator_no_longer_takes_releases_the_reservation(
        site: tuple[Site, Coordinator]) -> None:
    # the site accepted a DP job (reserving its whole spend) while another site's refusal
    # failed it: nothing starts here, and the reservation must not shrink the budget for good
    agent, coordinator = site
    coordinator.assignments = [offer("dp-1", rounds=4, pipeline=[DP_STAGE],
                                     data={"dataset": "digits-dp"})]
    coordinator.answer_status = 404
    agent.beat()
    assert coordinator.answers[0]["accept"] is True
    assert not agent.actors
    budget = agent.config.catalog["digits-dp"].budget
    assert budget is not None
    ledger = agent.ledger.report({"digits-dp": budget})
    assert ledger["digits-dp"]["reserved_and_spent"] == 0.0
    end = audit(agent)[-1]
    assert (end["kind"], end["outcome"], end["updates_sent"]) == ("end", "stopped", 0)
    # a second DP job of the same size still fits the budget (it would not with the
    # withdrawn job's reservation kept: 1.69 + 1.69 > 2)
    coordinator.assignments = [offer("dp-2", rounds=4, pipeline=[DP_STAGE],
                                     data={"dataset": "digits-dp"})]
    agent.beat()
    assert coordinator.answers[-1]["accept"] is True


def test_a_second_agent_on_the_same_state_dir_is_refused(
        site: tuple[Site, Coordinator]) -> None:
    # two agents on one state (systemd's and one started by hand) both answered every offer
    # and wrote the audit log with two hash chains interleaved: broken for good
    agent, _ = site
    held = lock_state_dir(agent.config.state_dir, "site")
    try:
        with pytest.raises(ConfigError, match=(
                rf"^state_dir: '{agent.config.state_dir}' is in use by another foedus site "
                rf"\(pid {os.getpid()}\); each site needs a state_dir of its own$")):
            run_site(agent.config)
    finally:
        held.close()
    lock_state_dir(agent.config.state_dir, "site").close()  # free again once closed


def test_an_acceptance_whose_reply_was_lost_is_started_once_the_coordinator_shows_it(
        site: tuple[Site, Coordinator], monkeypatch: pytest.MonkeyPatch) -> None:
    # the coordinator took the acceptance, the reply was lost: the site used to forget the
    # actor (never started; the job's rounds waited for it in vain)
    agent, coordinator = site
    started: list[tuple[str, str]] = []
    monkeypatch.setattr(agent, "_start", lambda record: started.append(
        (record.job_id, record.actor)))
    coordinator.assignments = [offer("lost-1", rounds=3)]
    coordinator.answer_lost = True
    with pytest.raises(httpx.TransportError):
        agent.beat()  # the agent's loop retries at its next heartbeat
    assert started == []
    coordinator.answer_lost = False
    coordinator.assignments = [{**offer("lost-1", rounds=3), "state": "accepted"}]
    agent.beat()
    assert started == [("lost-1", "client-001")]
    job = yaml.safe_load((agent.config.state_dir / "jobs" / "lost-1" / "job.yaml").read_text())
    assert job["data"] == {"dataset": "digits", "options": {}}  # filled from the catalog
