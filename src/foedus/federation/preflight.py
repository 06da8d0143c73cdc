"""Which sites would accept a job, and why the others would not: the answer of a dry run
(``POST /v1/jobs?dry_run=1``), shown by the web console before anything is queued.

The coordinator cannot decide for a site (each site checks every offer itself, against its own
policy and catalog, whatever the coordinator says), but every site reports both in its
heartbeat, so the coordinator runs the *same* checks (:func:`~foedus.federation.policy.
check_policy` and the catalog lookup of :func:`~foedus.federation.policy.fill_data`) on what
the site last reported. On a dataset with a privacy budget it also runs the site's budget
check (:func:`~foedus.federation.ledger.over_budget`) on the site's last ledger report: the
job's planned charge composed with every charge the report lists. The verdict is a forecast
with the site's own words as the reason; the site's answer to the real offer is what counts
(another job may reserve budget in between).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.federation.ledger import Budget, Charge, mechanisms_of, over_budget
from foedus.federation.policy import CatalogEntry, Policy, check_policy, fill_data

__all__ = ["budget_verdict", "dry_run", "verdict"]

#: assignment states in which a site is running (or starting) a job's actor
_BUSY = ("accepted", "running")


Verdict = tuple[bool | None, str]


def verdict(job: dict[str, Any], site: dict[str, Any], running: int,
            budget: Callable[[Policy], Verdict | None] | None = None) -> Verdict:
    """``(accepts, why)`` for one site as ``GET /v1/sites`` lists it; ``accepts`` is None when
    the site never reported its policy (an older agent), so nobody can tell. ``budget``: the
    site's budget check, run once its policy accepts the job (None: no budget applies)."""
    if not site["online"]:
        return False, f"offline (no heartbeat for {time.time() - site['last_seen']:.0f}s)"
    offers = site.get("offers") or {}
    catalog = {name: CatalogEntry(name) for name in offers.get("catalog") or []}
    try:
        fill_data(job, catalog)  # the site's own catalog check, with the site's own message
    except ConfigError as exc:
        return False, str(exc)
    if "policy" not in offers:
        return None, "this site does not report its policy; only its answer will tell"
    try:
        policy = Policy.from_dict(offers["policy"])
    except ConfigError as exc:
        return None, f"its reported policy does not read: {exc}"
    reason = check_policy(job, policy, running)
    if reason:
        return False, reason
    budgeted = budget(policy) if budget is not None else None
    if budgeted is not None:
        return budgeted
    return True, "its policy and catalog accept the job"


def budget_verdict(job: dict[str, Any], spec: JobSpec, ledger: dict[str, Any] | None,
                   policy: Policy) -> Verdict | None:
    """The site's budget check on its last ledger report (``ledger``: the report, None when
    the site sent none): None when the job's dataset has no budget there. ``spec`` is the job
    as the coordinator read it: its DP stages, hence its charge, are the job's own (the data's
    options, which only the site knows, do not enter them)."""
    name = str((job.get("data") or {}).get("dataset", "digits"))
    entry = (ledger or {}).get(name)
    if not isinstance(entry, dict):
        return None
    try:
        budget = Budget.from_dict(entry.get("budget"), f"ledger.{name}.budget")
        mechanisms = mechanisms_of(spec)
    except ConfigError as exc:
        return False, str(exc)
    if not mechanisms:
        if policy.allow_non_dp:
            return None
        return False, (f"dataset {name!r} has a lifetime privacy budget (epsilon "
                       f"{budget.epsilon:g} at delta {budget.delta:g}) and this job has no DP "
                       "stage (local-dp or central-dp) whose spend could be counted; this "
                       "site's policy does not allow non-DP jobs on it (policy.allow_non_dp)")
    try:
        before = [Charge.from_json(json.dumps(j["charge"])) for j in entry.get("jobs") or []]
    except (KeyError, TypeError, ValueError):
        return None, (f"its ledger report lists no charges for dataset {name!r} (an older "
                      "agent); only its answer will tell whether the budget allows the job")
    reason = over_budget(name, budget, before, Charge.planned(mechanisms, spec.rounds))
    if reason is not None:
        return False, reason
    return True, f"its policy, catalog and the budget of dataset {name!r} accept the job"


def dry_run(job: dict[str, Any], sites: list[dict[str, Any]],
            assignments: list[dict[str, Any]], spec: JobSpec | None = None,
            ledgers: Callable[[str], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The dry run's answer for a job the coordinator's own checks passed: every known site's
    verdict (``sites``: ``Store.sites()``; ``assignments``: every assignment, to count the
    jobs each site runs, for its ``max_jobs``; ``spec`` and ``ledgers``, a site's last ledger
    report by name, for the budget checks, left out without them). It may compose privacy
    charges (dp_accounting, milliseconds per site): the coordinator runs it in a thread."""
    busy: dict[str, set[str]] = {}
    for a in assignments:
        if a["state"] in _BUSY:
            busy.setdefault(a["site"], set()).add(a["job_id"])
    out = []
    for site in sites:
        budget = (partial(budget_verdict, job, spec, ledgers(site["name"]))
                  if spec is not None and ledgers is not None else None)
        accepts, why = verdict(job, site, len(busy.get(site["name"], ())), budget)
        out.append({"site": site["name"], "online": site["online"], "accepts": accepts,
                    "reason": why})
    return {"valid": True, "job_id": job.get("job_id"), "sites": out}
