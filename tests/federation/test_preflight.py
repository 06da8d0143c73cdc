"""A dry run's verdicts: the checks each site would make, on what the site last reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from foedus.config.spec import JobSpec
from foedus.federation.ledger import Budget, Charge, Ledger, epsilon_of, mechanisms_of
from foedus.federation.policy import Policy
from foedus.federation.preflight import dry_run, verdict

JOB: dict[str, Any] = {"job_id": "j", "rounds": 80, "data": {"dataset": "digits"},
                       "model": {"type": "sklearn-sgd"},
                       "transport": {"type": "mqtt", "params": {"host": "broker"}}}


def site(name: str, policy: Policy | None = None, *, online: bool = True,
         catalog: tuple[str, ...] = ("digits",)) -> dict[str, Any]:
    offers: dict[str, Any] = {"catalog": list(catalog)}
    if policy is not None:
        offers["policy"] = policy.as_dict()
    return {"name": name, "online": online, "last_seen": 0.0, "version": "0.1.0",
            "offers": offers}


def test_each_site_is_judged_by_its_own_policy_and_catalog_in_its_own_words() -> None:
    assert verdict(JOB, site("a", Policy()), 0) == (True, "its policy and catalog accept the job")
    assert verdict(JOB, site("b", Policy(max_rounds=60)), 0) == (
        False, "80 rounds is more than this site allows (60)")
    assert verdict(JOB, site("c", Policy(), catalog=("admissions",)), 0) == (
        False, "no data catalog entry 'digits' here (entries: admissions)")
    accepts, why = verdict(JOB, site("d", Policy(), online=False), 0)
    assert not accepts and why.startswith("offline (no heartbeat for ")
    assert verdict(JOB, site("e"), 0)[0] is None  # an agent that does not report its policy


def test_the_jobs_a_site_runs_count_against_its_max_jobs() -> None:
    sites = [site("a", Policy(max_jobs=1)), site("b", Policy(max_jobs=2))]
    busy = [{"job_id": "other", "site": "a", "state": "running"},
            {"job_id": "other", "site": "b", "state": "running"},
            {"job_id": "old", "site": "b", "state": "done"}]  # ended: not counted
    answer = dry_run(JOB | {"rounds": 3}, sites, busy)
    assert [(v["site"], v["accepts"], v["reason"]) for v in answer["sites"]] == [
        ("a", False, "this site already runs 1 jobs, its limit (1)"),
        ("b", True, "its policy and catalog accept the job")]
    assert answer["valid"] and answer["job_id"] == "j"


def test_a_dp_job_is_checked_against_each_sites_budget_as_its_ledger_reports_it(
        tmp_path: Path) -> None:
    pytest.importorskip("dp_accounting")
    job = {**JOB, "rounds": 20, "clients": {"count": 2},
           "pipeline": [{"type": "central-dp", "params": {
               "clip_norm": 1.0, "noise_multiplier": 5.0, "clients_per_round": 2}}]}
    spec = JobSpec.from_dict(job)
    (mechanism,) = mechanisms_of(spec)
    # a budget that 60 reserved rounds plus this job's 20 would pass, and 20 alone would not
    budget = Budget(epsilon_of([Charge.planned([mechanism], 70)], 1e-5), 1e-5)
    empty, full = Ledger(tmp_path / "empty.db"), Ledger(tmp_path / "full.db")
    assert full.reserve("digits", budget, "earlier", [mechanism], 60)[0] is None
    reports = {name: json.loads(json.dumps(ledger.report({"digits": budget})))
               for name, ledger in (("a", empty), ("b", full))}
    old = json.loads(json.dumps(reports["b"]))
    del old["digits"]["jobs"][0]["charge"]  # an agent whose report predates the charges
    reports.update({"c": old, "d": {}})  # d: a site without budgets
    sites = [site(name, Policy()) for name in "abcd"]
    answer = dry_run(job, sites, [], spec, reports.get)
    verdicts = {v["site"]: (v["accepts"], v["reason"]) for v in answer["sites"]}
    # site b's reason is word for word what its ledger answers the real offer
    refusal, _ = full.reserve("digits", budget, "this-job", [mechanism], 20)
    assert refusal is not None and refusal.startswith("dataset 'digits': privacy budget ")
    assert verdicts == {
        "a": (True, "its policy, catalog and the budget of dataset 'digits' accept the job"),
        "b": (False, refusal),
        "c": (None, "its ledger report lists no charges for dataset 'digits' (an older "
                    "agent); only its answer will tell whether the budget allows the job"),
        "d": (True, "its policy and catalog accept the job")}
    no_dp = {**job, "pipeline": [{"type": "clip", "params": {"clip_norm": 1.0}}]}
    plain = dry_run(no_dp, [site("a", Policy()), site("e", Policy(allow_non_dp=True))], [],
                    JobSpec.from_dict(no_dp), {"a": reports["a"], "e": reports["a"]}.get)
    (a, e) = plain["sites"]
    assert a["accepts"] is False and "this job has no DP stage" in a["reason"]
    assert e["accepts"] is True
