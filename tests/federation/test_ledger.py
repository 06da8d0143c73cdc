"""The privacy-budget ledger: its arithmetic is the job's own accountant's, composed across jobs
with RDP; it refuses what would pass a budget, reserves what it accepts, settles to what was
spent (never less), and survives a restart. The site's offer check uses it. No processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from foedus.config.parts import pipeline_of
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.federation.ledger import (
    Budget,
    Charge,
    Ledger,
    Mechanism,
    epsilon_of,
    mechanisms_of,
    settled,
)
from foedus.federation.policy import Policy, parse_catalog
from foedus.federation.site import SiteConfig, check_offer
from foedus.federation.site_actor import read_progress, sent_upper

pytest.importorskip("dp_accounting")

BUDGET = Budget(epsilon=8.0, delta=1e-5)


def dp_job(rounds: int = 5, stage: str = "central-dp", **params: Any) -> dict[str, Any]:
    settings = {"clip_norm": 1.0, "noise_multiplier": 5.0, **params}
    if stage == "central-dp":
        settings.setdefault("clients_per_round", 2)
    return {"job_id": "dp", "rounds": rounds, "clients": {"count": 2},
            "data": {"dataset": "digits", "partition": "iid"},
            "pipeline": [{"type": stage, "params": settings}]}


def central(rounds: int, noise: float = 5.0) -> Charge:
    return Charge.planned([Mechanism("pipeline[0]:central-dp", noise, 2, 2, "poisson",
                                     local=False)], rounds)


def test_a_jobs_charge_is_what_its_own_accountant_reports() -> None:
    for stage in ("central-dp", "local-dp"):
        job = dp_job(rounds=7, stage=stage, delta=1e-6)
        (mechanism,) = mechanisms_of(job)
        assert mechanism.local is (stage == "local-dp")
        accountant = pipeline_of(JobSpec.from_dict(job))[0].accountant  # type: ignore[attr-defined]
        assert epsilon_of([Charge.planned([mechanism], 7)], 1e-6) == pytest.approx(
            accountant.epsilon(7), rel=1e-9)


def test_jobs_compose_as_one_longer_job_and_tighter_than_adding_epsilons() -> None:
    # RDP composition: two 10-round jobs spend exactly what one 20-round job spends
    two = epsilon_of([central(10), central(10)], BUDGET.delta)
    assert two == pytest.approx(epsilon_of([central(20)], BUDGET.delta), rel=1e-9)
    assert epsilon_of([central(10)], BUDGET.delta) < two < 2 * epsilon_of([central(10)],
                                                                          BUDGET.delta)
    assert epsilon_of([], BUDGET.delta) == 0.0


def test_a_job_without_dp_has_no_mechanism_and_fixed_sampling_cannot_be_charged() -> None:
    assert mechanisms_of({**dp_job(), "pipeline": [{"type": "clip",
                                                   "params": {"clip_norm": 1.0}}]}) == ()
    with pytest.raises(ConfigError, match=r"pipeline\[0\]:central-dp: sampling 'fixed'"):
        mechanisms_of(dp_job(sampling="fixed", population=10))


def test_reserve_refuses_what_would_pass_the_budget_naming_everything(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    (mechanism,) = central(1).parts[0][:1]
    reason, alone = ledger.reserve("digits", BUDGET, "job-1", [mechanism], 60)
    assert reason is None and 0 < alone < BUDGET.epsilon
    spent = ledger.spent("digits", BUDGET.delta)
    assert spent == pytest.approx(alone)
    assert ledger.reserve("digits", BUDGET, "job-1", [mechanism], 60)[0] is None  # seen again
    assert ledger.spent("digits", BUDGET.delta) == pytest.approx(spent)

    reason, second = ledger.reserve("digits", BUDGET, "job-2", [mechanism], 60)
    after = epsilon_of([central(120)], BUDGET.delta)
    assert after > BUDGET.epsilon
    assert reason == (f"dataset 'digits': privacy budget epsilon 8 at delta 1e-05; spent "
                      f"{spent:.3f}, this job requests {second:.3f} (60 rounds), which would "
                      f"bring it to {after:.3f}")
    assert ledger.spent("digits", BUDGET.delta) == pytest.approx(spent)  # nothing reserved
    assert ledger.spent("other", BUDGET.delta) == 0.0  # budgets are per dataset


def test_settle_counts_what_was_sent_and_never_less(tmp_path: Path) -> None:
    central_m = Mechanism("c", 5.0, 2, 2, "poisson", local=False)
    local_m = Mechanism("l", 1.1, 1, 1, "poisson", local=True)
    sampled = Mechanism("s", 1.1, 10, 2, "poisson", local=False)
    charge = Charge(((central_m, 10), (local_m, 10), (sampled, 10)))
    # 3 updates sent: central and local pay 3 rounds, a sampled one keeps its 10
    assert settled(charge, 3).parts == ((central_m, 3), (local_m, 3), (sampled, 10))
    # a restart re-sent updates: local DP pays each, central at most its planned rounds
    assert settled(charge, 12).parts == ((central_m, 10), (local_m, 12), (sampled, 10))
    assert settled(charge, None) == charge  # unknown: the reservation stays

    ledger = Ledger(tmp_path / "ledger.db")
    ledger.reserve("digits", BUDGET, "job-1", [central_m], 10)
    assert ledger.settle("job-1", 4, "exit status 0") == {"digits": 4}
    assert ledger.settle("job-1", 1, "again") == {}  # settled once
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.db")  # a restarted site finds it
    assert reopened.spent("digits", BUDGET.delta) == pytest.approx(
        epsilon_of([central(4)], BUDGET.delta))
    report = reopened.report({"digits": BUDGET})["digits"]
    assert report["budget"] == {"epsilon": 8.0, "delta": 1e-5}
    assert [(j["job_id"], j["state"], j["rounds"], j["note"]) for j in report["jobs"]] == [
        ("job-1", "settled", 4, "exit status 0")]


def test_the_progress_file_bounds_the_updates_sent(tmp_path: Path) -> None:
    path = tmp_path / "client-000.progress"
    assert sent_upper(path) is None
    path.write_text('{"start": 1}\n{"end": 0}\n')
    assert sent_upper(path) is None  # no answer seen (e.g. a swarm peer): unknown
    lines = [{"start": 1}, {"round": 1, "update": True}, {"round": 2, "update": False},
             {"round": 2, "update": True}]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert sent_upper(path) == 2 + 1  # killed without an end line: maybe one more sent
    with path.open("a") as f:
        f.write(json.dumps({"end": 0}) + "\n" + '{"start": 2}\n{"round": 3, "upd')
    found = read_progress(path)
    assert found is not None and (found.starts, found.ends, found.updates) == (2, 1, 2)
    assert found.answers == 3
    assert found.sent_upper == 3 and found.last_end is None


def test_budget_and_policy_settings_are_checked_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^catalog.d.budget.delta: expected a number in "
                                          r"\(0, 1\), got 2$"):
        parse_catalog({"d": {"dataset": "digits", "budget": {"epsilon": 1, "delta": 2}}},
                      budgets=True)
    with pytest.raises(ConfigError, match=r"^catalog.d.budget: unknown key; allowed: "
                                          "dataset, options$"):
        parse_catalog({"d": {"dataset": "digits", "budget": {"epsilon": 1, "delta": 0.1}}})
    with pytest.raises(ConfigError, match=r"policy\.allow_non_dp: expected true or false"):
        Policy.from_dict({"allow_non_dp": "yes"})


def site_config(tmp_path: Path, **policy: Any) -> SiteConfig:
    catalog = parse_catalog({"digits": {"dataset": "digits", "budget": {"epsilon": 8,
                                                                        "delta": 1e-5}},
                             "open": {"dataset": "digits"}}, budgets=True)
    return SiteConfig("https://coordinator", tmp_path, None,  # type: ignore[arg-type]
                      1.0, catalog, Policy.from_dict(policy))


def test_the_site_refuses_non_dp_jobs_on_a_budgeted_dataset_unless_its_policy_allows(
        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    plain = {**dp_job(), "pipeline": []}
    reason = check_offer("j1", plain, site_config(tmp_path), ledger, running=0).reason
    assert reason is not None and reason.startswith(
        "dataset 'digits' has a lifetime privacy budget (epsilon 8 at delta 1e-05) and this "
        "job has no DP stage")
    assert check_offer("j1", plain, site_config(tmp_path, allow_non_dp=True), ledger,
                       running=0).reason is None
    open_data = {**plain, "data": {"dataset": "open", "partition": "iid"}}
    assert check_offer("j2", open_data, site_config(tmp_path), ledger, running=0).reason is None
    offer = check_offer("j3", dp_job(rounds=5), site_config(tmp_path), ledger, running=0)
    assert offer.reason is None and offer.job["data"]["options"] == {}
    assert (offer.dataset, offer.delta) == ("digits", 1e-5)
    assert offer.epsilon == pytest.approx(epsilon_of([central(5)], 1e-5))
    assert ledger.report({"digits": BUDGET})["digits"]["jobs"][0]["job_id"] == "j3"
    refused = check_offer("j4", dp_job(rounds=500), site_config(tmp_path), ledger, running=0)
    assert refused.reason is not None and refused.reason.startswith(
        "dataset 'digits': privacy budget")
    # on a dataset without a budget a DP job is not charged, but its epsilon is stated at
    # its own delta for the audit log
    free = check_offer("j5", {**dp_job(rounds=5, delta=1e-6), "data": {
        "dataset": "open", "partition": "iid"}}, site_config(tmp_path), ledger, running=0)
    assert free.reason is None and free.delta == 1e-6
    assert free.epsilon == pytest.approx(epsilon_of([central(5)], 1e-6))
