"""A site's audit log: every job it was offered, what it decided and how the job ended.

One JSON object per line, only ever appended (and fsynced), in the site's state dir:

* an ``offer`` entry when the site decides on an offer: the job id, the actor, who submitted
  it, the SHA-256 of the job file as the site received it, ``accepted`` or ``refused`` with the
  reason, the pipeline's stages, the catalog entry and the epsilon the job requests;
* an ``end`` entry when the site's actor of the job ends: its outcome (``exited``,
  ``failed``, ``stopped``), the updates it sent and the epsilon it spent.

Each entry carries ``seq`` (its line number from 0) and ``prev``, the SHA-256 of the previous
line (64 zeros for the first), so an edited, removed or reordered line breaks the chain
(:func:`verify`). This makes tampering evident to whoever holds a copy made earlier (the
coordinator keeps one, sent with the heartbeats), not impossible for the site's own root.

``foedus site-audit --config site.yaml [--json]`` prints it (:func:`main_site_audit`); the
coordinator shows its copy to admins at ``GET /v1/sites/{name}/audit``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from foedus.core.errors import ConfigError

__all__ = ["GENESIS", "AuditLog", "fold", "hash_line", "line_of", "main_site_audit", "verify"]

GENESIS = "0" * 64


def line_of(entry: dict[str, Any]) -> str:
    """An entry as its one canonical line (what the chain hashes)."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def hash_line(line: str) -> str:
    """The chain's link to a line."""
    return hashlib.sha256(line.encode()).hexdigest()


def verify(entries: Iterable[dict[str, Any]]) -> int | None:
    """The ``seq`` of the first entry that breaks the chain, None when it is intact."""
    prev = GENESIS
    for n, entry in enumerate(entries):
        if entry.get("seq") != n or entry.get("prev") != prev:
            return n
        prev = hash_line(line_of(entry))
    return None


class AuditLog:
    """The site's append-only audit file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        entries = self.entries()
        self._seq = len(entries)
        self._prev = hash_line(line_of(entries[-1])) if entries else GENESIS

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        """The entries from ``seq`` ``since`` on (a torn last line is left out)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines[since:]:
            try:
                out.append(json.loads(line))
            except ValueError:
                break
        return out

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            entry = {**entry, "seq": self._seq, "prev": self._prev, "at": time.time()}
            line = line_of(entry)
            with self.path.open("a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._seq += 1
            self._prev = hash_line(line)
        return entry

    def offered(self, *, job_id: str, actor: str, submitter: str | None, job_yaml: str,
                reason: str | None, stages: list[str], dataset: str | None,
                epsilon: float | None, delta: float | None) -> dict[str, Any]:
        """Record a decision on an offer (``reason`` None: accepted)."""
        return self._append({
            "kind": "offer", "job_id": job_id, "actor": actor, "submitter": submitter,
            "job_sha256": hashlib.sha256(job_yaml.encode()).hexdigest(),
            "decision": "accepted" if reason is None else "refused", "reason": reason,
            "stages": stages, "dataset": dataset, "epsilon_requested": epsilon,
            "delta": delta})

    def ended(self, *, job_id: str, actor: str, outcome: str, reason: str | None,
              updates_sent: int | None, epsilon: float | None) -> dict[str, Any]:
        """Record how the site's actor of a job ended."""
        return self._append({
            "kind": "end", "job_id": job_id, "actor": actor, "outcome": outcome,
            "reason": reason, "updates_sent": updates_sent, "epsilon_spent": epsilon})


def fold(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (job, actor): its offer entry with the outcome of its end entry."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        key = (str(e.get("job_id")), str(e.get("actor")))
        row = rows.setdefault(key, {"job_id": key[0], "actor": key[1], "outcome": None,
                                    "epsilon_spent": None, "updates_sent": None})
        if e.get("kind") == "offer":
            row.update({k: e.get(k) for k in ("at", "submitter", "job_sha256", "decision",
                                              "reason", "stages", "dataset",
                                              "epsilon_requested", "delta")})
        elif e.get("kind") == "end":
            row.update({"outcome": e.get("outcome"), "epsilon_spent": e.get("epsilon_spent"),
                        "updates_sent": e.get("updates_sent"), "ended": e.get("at"),
                        **({"reason": e["reason"]} if e.get("reason") else {})})
    return list(rows.values())


def _eps(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def main_site_audit(config_path: str, as_json: bool) -> int:
    """``foedus site-audit``: the site's audit log, one row per job (``--json``: every entry
    and the chain's state). A broken chain is an error (exit status 2)."""
    from foedus.federation.settings import SITE_KEYS, path_of, read_config

    raw = read_config(config_path, SITE_KEYS, {"state_dir"})
    log = AuditLog(path_of(raw, raw["state_dir"], "state_dir") / "audit.jsonl")
    if not log.path.exists():  # an empty table would not tell a wrong state_dir apart
        print(f"foedus: no audit log at {log.path}: this site has not been offered a job yet "
              "(or state_dir is not the site's)", file=sys.stderr)
    entries = log.entries()
    broken = verify(entries)
    if as_json:
        print(json.dumps({"entries": entries, "jobs": fold(entries),
                          "chain": "intact" if broken is None else f"broken at {broken}"},
                         indent=2))
    else:
        rows = [["TIME", "JOB", "SUBMITTER", "DECISION", "DATASET", "EPS REQ", "EPS SPENT",
                 "OUTCOME", "REASON"]]
        for r in fold(entries):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("at") or 0))
            rows.append([stamp, r["job_id"], str(r.get("submitter") or "-"),
                         str(r.get("decision") or "-"), str(r.get("dataset") or "-"),
                         _eps(r.get("epsilon_requested")), _eps(r.get("epsilon_spent")),
                         str(r.get("outcome") or "-"), str(r.get("reason") or "")])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if broken is not None:
        raise ConfigError(f"audit log {log.path}: the hash chain breaks at entry {broken}: an "
                          "entry was edited, removed or reordered")
    return 0
