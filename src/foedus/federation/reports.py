"""What sites report about themselves with their heartbeats, kept at the coordinator for admins:
each site's audit log (:mod:`foedus.federation.audit`) and its privacy-budget ledger
(:mod:`foedus.federation.ledger`).

The coordinator keeps a copy in files under ``state_dir/sites/NAME/`` (``audit.jsonl``, the
site's lines byte for byte, so its hash chain verifies here too; ``ledger.json``, the latest
snapshot). Delivery is driven by the coordinator: every heartbeat answer says how many audit
entries it holds for the site (``audit_have``), and the site sends the entries from there
on, a bounded batch per heartbeat. A lost answer, a restarted coordinator or a restarted site
cannot lose or duplicate an entry; an entry that does not continue the copy (wrong ``seq`` or
a broken chain) is refused and the copy says so. The site is the authority: this is a copy.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from foedus.federation.audit import GENESIS, fold, hash_line, line_of, verify

__all__ = ["AUDIT_BATCH", "SiteReports"]

#: audit entries a site sends per heartbeat at most
AUDIT_BATCH = 200


class SiteReports:
    """The coordinator's copies of every site's audit log and ledger."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._have: dict[str, int] = {}

    def _dir(self, site: str) -> Path:
        return self.root / site  # a site's name is its certificate's CN, never a path

    def _entries(self, site: str) -> list[dict[str, Any]]:
        try:
            lines = (self._dir(site) / "audit.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line]

    def have(self, site: str) -> int:
        if site not in self._have:
            self._have[site] = len(self._entries(site))
        return self._have[site]

    def receive(self, site: str, body: dict[str, Any]) -> dict[str, Any]:
        """Take a heartbeat's ``audit`` entries and ``ledger`` snapshot; what the answer adds
        (``audit_have``)."""
        if "/" in site or site in ("", ".", ".."):
            return {}
        with self._lock:
            where = self._dir(site)
            entries = body.get("audit")
            if isinstance(entries, list) and entries:
                old = self._entries(site)
                have = len(old)
                prev = hash_line(line_of(old[-1])) if old else GENESIS
                fresh: list[dict[str, Any]] = []
                for entry in entries:
                    if not isinstance(entry, dict) or entry.get("seq") != have + len(fresh) \
                            or entry.get("prev") != prev:
                        break
                    fresh.append(entry)
                    prev = hash_line(line_of(entry))
                if fresh:
                    where.mkdir(parents=True, exist_ok=True)
                    with (where / "audit.jsonl").open("a") as f:
                        f.write("".join(line_of(e) + "\n" for e in fresh))
                    self._have[site] = have + len(fresh)
            ledger = body.get("ledger")
            if isinstance(ledger, dict):
                where.mkdir(parents=True, exist_ok=True)
                tmp = where / "ledger.json.tmp"
                tmp.write_text(json.dumps(ledger))
                os.replace(tmp, where / "ledger.json")
            return {"audit_have": self.have(site)}

    def audit(self, site: str) -> dict[str, Any]:
        """The site's audit log as the coordinator holds it: every entry, one row per job,
        and whether the hash chain is intact."""
        entries = self._entries(site)
        broken = verify(entries)
        return {"site": site, "entries": entries, "jobs": fold(entries),
                "chain": "intact" if broken is None else f"broken at {broken}"}

    def ledger(self, site: str) -> dict[str, Any] | None:
        """The site's latest ledger snapshot, None when it never sent one."""
        try:
            found: dict[str, Any] = json.loads((self._dir(site) / "ledger.json").read_text())
        except FileNotFoundError:
            return None
        return found
