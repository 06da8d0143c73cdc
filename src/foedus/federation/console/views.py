"""What each console page shows, as plain values for the templates.

Built from the same rows the coordinator's API serves (its store), so a page and
``foedus jobs`` / ``foedus sites`` never disagree. Pure functions of those rows (the clock is
an argument), tested without a coordinator.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import yaml

from foedus.config.spec import JobSpec
from foedus.federation.store import JOB_STATES

__all__ = ["ACTIVE", "EPSILON", "audit_rows", "job_row", "ledger_datasets", "metric",
           "policy_items", "site_row", "total_rounds", "when"]

#: a job that may still change (the console polls it and offers to cancel it)
ACTIVE = ("queued", "running")
#: the privacy accountant's metric (:meth:`foedus.privacy.accountant.PrivacyAccountant.metrics`)
EPSILON = "dp_epsilon"
#: policy keys in the order and words a site operator would use
_POLICY_LABELS = {"models": "models", "aggregators": "aggregators", "stages": "stages",
                  "transports": "transports", "require_stages": "required stages",
                  "max_rounds": "max rounds", "max_jobs": "max jobs at once"}


@functools.lru_cache(maxsize=4096)
def total_rounds(job_yaml: str) -> int:
    """The job file's ``rounds`` (JobSpec's default when it names none); 0 for a file that
    does not read (the coordinator accepted it, so only a damaged row could). Remembered per
    text: the jobs page asks for every job's every few seconds, and parsing YAML is slow."""
    try:
        job = yaml.safe_load(job_yaml)
    except yaml.YAMLError:
        return 0
    value = job.get("rounds", JobSpec.rounds) if isinstance(job, dict) else 0
    return value if isinstance(value, int) else 0


def metric(value: Any) -> str:
    """A metric as the CLI prints it (4 decimals), or a dash when there is none."""
    return f"{value:.4f}" if isinstance(value, int | float) else "\N{EN DASH}"


def job_row(job: dict[str, Any], last_round: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the jobs table: ``job`` as ``Job.public()`` gives it, and its latest round
    record (:meth:`~foedus.federation.store.Store.latest_rounds`), if it has one."""
    latest = (last_round or {}).get("metrics") or {}
    result = job.get("result") or {}
    return {
        "id": job["id"], "owner": job["owner"], "state": job["state"],
        "reason": job.get("reason") or "", "sites": job["sites"],
        "round": last_round["round"] if last_round else 0,
        "rounds": total_rounds(job["job_yaml"]),
        "accuracy": metric(latest.get("accuracy", result.get("final_accuracy"))),
        "loss": metric(latest.get("loss", result.get("final_loss"))),
        "epsilon": metric(latest.get(EPSILON)),
        "active": job["state"] in ACTIVE,
    }


def policy_items(offers: dict[str, Any]) -> list[tuple[str, str]]:
    """A site's reported policy as (label, value) pairs; a key the policy leaves out means no
    limit, and is left out here too."""
    policy = offers.get("policy")
    if not isinstance(policy, dict):
        return [("policy", "not reported by this site")]
    items = []
    for key, label in _POLICY_LABELS.items():
        value = policy.get(key)
        if value is None or value == []:
            continue
        items.append((label, ", ".join(value) if isinstance(value, list) else str(value)))
    if policy.get("allow_non_dp") is True:  # a protection switched off (refused by default)
        items.append(("jobs without DP on budgeted datasets", "allowed"))
    return items or [("policy", "no limits")]


def ago(seconds: float) -> str:
    """``4 s ago``, ``3 min ago``, ``2 h ago``: how long since a heartbeat."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def site_row(site: dict[str, Any], running: list[str], now: float) -> dict[str, Any]:
    """One site of the federation page: ``site`` as ``GET /v1/sites`` lists it, and the jobs
    it runs now."""
    offers = site.get("offers") or {}
    return {
        "name": site["name"], "online": site["online"], "version": site["version"],
        "last_seen": ago(now - site["last_seen"]),
        "last_seen_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(site["last_seen"])),
        "catalog": offers.get("catalog") or [], "policy": policy_items(offers),
        "running": running,
    }


def status_filter(value: str | None) -> str | None:
    """The jobs page's ``status`` parameter: a job state, or None for every job (an unknown
    value shows every job rather than an error: it comes from a link or a bookmark)."""
    return value if value in JOB_STATES else None


def when(at: Any) -> str:
    """A timestamp as the pages print it (UTC), or a dash when there is none."""
    if not isinstance(at, int | float):
        return "\N{EN DASH}"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _eps(value: Any) -> str:
    """An epsilon as ``foedus site-audit`` prints it (3 decimals), or a dash."""
    return f"{value:.3f}" if isinstance(value, int | float) else "\N{EN DASH}"


def ledger_datasets(ledger: dict[str, Any]) -> list[dict[str, Any]]:
    """A site's ledger report (:meth:`foedus.federation.ledger.Ledger.report`) as one block
    per budgeted dataset: the budget, what settled jobs spent, what spent and reserved jobs
    hold together (composed, so not a sum), what remains, and one row per job."""
    out = []
    for name, entry in sorted(ledger.items()):
        if not isinstance(entry, dict):
            continue
        budget = entry.get("budget") or {}
        epsilon, held = budget.get("epsilon"), entry.get("reserved_and_spent")
        remaining = (max(0.0, epsilon - held) if isinstance(epsilon, int | float)
                     and isinstance(held, int | float) else None)
        out.append({
            "name": name, "epsilon": _eps(epsilon),
            "delta": (f"{budget['delta']:g}" if isinstance(budget.get("delta"), int | float)
                      else "\N{EN DASH}"),
            "spent": _eps(entry.get("spent")), "held": _eps(held),
            "remaining": _eps(remaining),
            "used_percent": (min(100, round(100 * held / epsilon))
                             if isinstance(epsilon, int | float) and epsilon > 0
                             and isinstance(held, int | float) else 0),
            "jobs": [{"job_id": str(j.get("job_id")), "state": str(j.get("state")),
                      "rounds": j.get("rounds"), "epsilon": _eps(j.get("epsilon")),
                      "reserved_at": when(j.get("reserved_at")),
                      "settled_at": when(j.get("settled_at")), "note": j.get("note") or ""}
                     for j in entry.get("jobs") or [] if isinstance(j, dict)],
        })
    return out


def audit_rows(audit: dict[str, Any]) -> list[dict[str, Any]]:
    """The audit log's rows per (job, actor) (:func:`foedus.federation.audit.fold`) as the
    page prints them; the job file's hash is kept whole (the page shortens it visibly)."""
    return [{"job_id": str(r.get("job_id")), "actor": str(r.get("actor")),
             "at": when(r.get("at")), "submitter": r.get("submitter") or "\N{EN DASH}",
             "job_sha256": r.get("job_sha256") or "",
             "decision": r.get("decision") or "\N{EN DASH}", "reason": r.get("reason") or "",
             "stages": ", ".join(r.get("stages") or []) or "\N{EN DASH}",
             "dataset": r.get("dataset") or "\N{EN DASH}",
             "epsilon_requested": _eps(r.get("epsilon_requested")),
             "outcome": r.get("outcome") or "\N{EN DASH}",
             "epsilon_spent": _eps(r.get("epsilon_spent")),
             "updates_sent": r.get("updates_sent")}
            for r in audit.get("jobs") or [] if isinstance(r, dict)]
