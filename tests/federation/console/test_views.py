"""What the console's pages show, from the rows the coordinator's API serves."""

from __future__ import annotations

from typing import Any

from foedus.federation.console import views
from foedus.federation.policy import Policy


def job(**changes: Any) -> dict[str, Any]:
    return {"id": "digits-1a2b3c", "owner": "ann", "state": "running", "reason": None,
            "sites": ["site-a", "site-b"], "result": None,
            "job_yaml": "job_id: digits-1a2b3c\nrounds: 5\n", **changes}


def test_a_running_jobs_row_shows_its_latest_round_and_metrics() -> None:
    latest = {"round": 2, "metrics": {"accuracy": 0.91234, "loss": 0.4, "dp_epsilon": 1.5}}
    row = views.job_row(job(), latest)
    assert (row["round"], row["rounds"]) == (2, 5)
    assert (row["accuracy"], row["loss"], row["epsilon"]) == ("0.9123", "0.4000", "1.5000")
    assert row["active"]


def test_a_job_without_rounds_shows_dashes_and_a_finished_one_its_result() -> None:
    empty = views.job_row(job(state="failed", reason="site site-b refused"), None)
    dash = "\N{EN DASH}"
    assert (empty["round"], empty["accuracy"], empty["epsilon"]) == (0, dash, dash)
    assert not empty["active"] and empty["reason"] == "site site-b refused"
    done = views.job_row(job(state="finished", result={"final_accuracy": 0.9}), None)
    assert done["accuracy"] == "0.9000"


def test_total_rounds_defaults_like_a_job_file() -> None:
    assert views.total_rounds("job_id: x\n") == 10  # JobSpec's default
    assert views.total_rounds("rounds: 3\n") == 3
    assert views.total_rounds(": not yaml: [") == 0


def test_a_sites_policy_lists_only_its_limits() -> None:
    offers = {"policy": Policy(models=("sklearn-sgd",), max_rounds=60).as_dict()}
    assert views.policy_items(offers) == [("models", "sklearn-sgd"), ("max rounds", "60")]
    assert views.policy_items({"policy": Policy().as_dict()}) == [("policy", "no limits")]
    assert views.policy_items({}) == [("policy", "not reported by this site")]


def test_a_sites_row_says_how_long_ago_it_was_heard() -> None:
    site = {"name": "site-a", "online": False, "version": "0.1.0", "last_seen": 1000.0,
            "offers": {"catalog": ["digits"]}}
    row = views.site_row(site, ["j-1"], now=1000.0 + 300)
    assert (row["last_seen"], row["catalog"], row["running"]) == ("5 min ago", ["digits"],
                                                                  ["j-1"])
    assert views.ago(4) == "4 s ago" and views.ago(7200) == "2 h ago"


def test_an_unknown_status_filter_shows_every_job() -> None:
    assert views.status_filter("running") == "running"
    assert views.status_filter("bogus") is None and views.status_filter(None) is None


def test_a_ledger_shows_what_remains_of_each_budget_and_never_less_than_nothing() -> None:
    report = {"digits": {"budget": {"epsilon": 8.0, "delta": 1e-5}, "spent": 2.5,
                         "reserved_and_spent": 6.0,
                         "jobs": [{"job_id": "j1", "state": "settled", "rounds": 5,
                                   "epsilon": 2.5, "reserved_at": 0.0, "settled_at": 60.0,
                                   "note": "exited"}]},
              "census": {"budget": {"epsilon": 1.0, "delta": 1e-6}, "spent": 1.2,
                         "reserved_and_spent": 1.2, "jobs": []}}
    census, digits = views.ledger_datasets(report)  # by name
    assert (digits["epsilon"], digits["delta"], digits["spent"], digits["held"],
            digits["remaining"], digits["used_percent"]) == (
        "8.000", "1e-05", "2.500", "6.000", "2.000", 75)
    assert digits["jobs"][0]["settled_at"] == "1970-01-01 00:01:00 UTC"
    assert (census["remaining"], census["used_percent"]) == ("0.000", 100)


def test_a_site_that_lets_jobs_without_dp_onto_budgeted_data_shows_it_in_its_policy() -> None:
    loosened = {"policy": Policy(max_rounds=60, allow_non_dp=True).as_dict()}
    assert views.policy_items(loosened) == [
        ("max rounds", "60"), ("jobs without DP on budgeted datasets", "allowed")]
    alone = {"policy": Policy(allow_non_dp=True).as_dict()}
    assert views.policy_items(alone) == [("jobs without DP on budgeted datasets", "allowed")]
