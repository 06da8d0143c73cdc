"""A dry run's verdicts: the checks each site would make, on what the site last reported."""

from __future__ import annotations

from typing import Any

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
