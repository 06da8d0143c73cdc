"""Which sites would accept a job, and why the others would not: the answer of a dry run
(``POST /v1/jobs?dry_run=1``), shown by the web console before anything is queued.

The coordinator cannot decide for a site (each site checks every offer itself, against its own
policy and catalog, whatever the coordinator says), but every site reports both in its
heartbeat, so the coordinator runs the *same* checks (:func:`~foedus.federation.policy.
check_policy` and the catalog lookup of :func:`~foedus.federation.policy.fill_data`) on what
the site last reported. The verdict is a forecast with the site's own words as the reason; the
site's answer to the real offer is what counts.
"""

from __future__ import annotations

import time
from typing import Any

from foedus.core.errors import ConfigError
from foedus.federation.policy import CatalogEntry, Policy, check_policy, fill_data

__all__ = ["dry_run", "verdict"]

#: assignment states in which a site is running (or starting) a job's actor
_BUSY = ("accepted", "running")


def verdict(job: dict[str, Any], site: dict[str, Any], running: int) -> tuple[bool | None, str]:
    """``(accepts, why)`` for one site as ``GET /v1/sites`` lists it; ``accepts`` is None when
    the site never reported its policy (an older agent), so nobody can tell."""
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
    return (False, reason) if reason else (True, "its policy and catalog accept the job")


def dry_run(job: dict[str, Any], sites: list[dict[str, Any]],
            assignments: list[dict[str, Any]]) -> dict[str, Any]:
    """The dry run's answer for a job the coordinator's own checks passed: every known site's
    verdict (``sites``: ``Store.sites()``; ``assignments``: every assignment, to count the
    jobs each site runs, for its ``max_jobs``)."""
    busy: dict[str, set[str]] = {}
    for a in assignments:
        if a["state"] in _BUSY:
            busy.setdefault(a["site"], set()).add(a["job_id"])
    out = []
    for site in sites:
        accepts, why = verdict(job, site, len(busy.get(site["name"], ())))
        out.append({"site": site["name"], "online": site["online"], "accepts": accepts,
                    "reason": why})
    return {"valid": True, "job_id": job.get("job_id"), "sites": out}
