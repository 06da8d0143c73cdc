"""The site's audit log: appended only, hash-chained, one row per job when read; the
coordinator's copy takes each entry once and in order, whatever heartbeats are lost or
repeated. No processes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from foedus.core.errors import ConfigError
from foedus.federation.audit import AuditLog, fold, main_site_audit, verify
from foedus.federation.reports import SiteReports

JOB = "job_id: digits-fed-1\nrounds: 3\n"


def two_jobs(path: Path) -> AuditLog:
    log = AuditLog(path)
    log.offered(job_id="digits-fed-1", actor="client-000", submitter="alice", job_yaml=JOB,
                reason=None, stages=["central-dp"], dataset="digits", epsilon=1.5, delta=1e-5)
    log.offered(job_id="long-2", actor="client-000", submitter="bob", job_yaml="rounds: 80\n",
                reason="80 rounds is more than this site allows (60)", stages=[],
                dataset="digits", epsilon=None, delta=None)
    log.ended(job_id="digits-fed-1", actor="client-000", outcome="exited", reason=None,
              updates_sent=3, epsilon=1.5)
    return log


def test_every_offer_and_end_is_one_chained_line(tmp_path: Path) -> None:
    log = two_jobs(tmp_path / "audit.jsonl")
    entries = log.entries()
    assert [e["seq"] for e in entries] == [0, 1, 2] and verify(entries) is None
    first = entries[0]
    assert first["job_sha256"] == hashlib.sha256(JOB.encode()).hexdigest()
    assert (first["decision"], first["submitter"], first["stages"]) == ("accepted", "alice",
                                                                         ["central-dp"])
    # a reopened log continues the chain
    AuditLog(tmp_path / "audit.jsonl").ended(job_id="long-2", actor="client-000",
                                              outcome="stopped", reason=None, updates_sent=0,
                                              epsilon=None)
    assert verify(log.entries()) is None
    rows = {r["job_id"]: r for r in fold(log.entries())}
    assert (rows["digits-fed-1"]["decision"], rows["digits-fed-1"]["outcome"],
            rows["digits-fed-1"]["epsilon_spent"]) == ("accepted", "exited", 1.5)
    assert rows["long-2"]["decision"] == "refused"
    assert rows["long-2"]["reason"] == "80 rounds is more than this site allows (60)"


def test_an_edited_line_breaks_the_chain_and_the_command_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two_jobs(tmp_path / "audit.jsonl")
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"coordinator": "https://c", "state_dir": str(tmp_path)}))
    assert main_site_audit(str(config), as_json=False) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["TIME", "JOB", "SUBMITTER", "DECISION", "DATASET", "EPS", "REQ",
                                "EPS", "SPENT", "OUTCOME", "REASON"]
    assert "digits-fed-1" in table[1] and "1.500" in table[1] and "exited" in table[1]
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"bob"', '"mallory"')
    (tmp_path / "audit.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="the hash chain breaks at entry 2"):
        main_site_audit(str(config), as_json=True)
    assert json.loads(capsys.readouterr().out)["chain"] == "broken at 2"


def test_the_coordinators_copy_takes_each_entry_once_in_order(tmp_path: Path) -> None:
    entries = two_jobs(tmp_path / "audit.jsonl").entries()
    reports = SiteReports(tmp_path / "sites")
    assert reports.receive("site-a", {}) == {"audit_have": 0}
    assert reports.receive("site-a", {"audit": entries[1:]}) == {"audit_have": 0}  # a gap
    assert reports.receive("site-a", {"audit": entries[:2]}) == {"audit_have": 2}
    assert reports.receive("site-a", {"audit": entries}) == {"audit_have": 2}  # seen: refused
    assert reports.receive("site-a", {"audit": entries[2:],
                                      "ledger": {"digits": {"spent": 1.5}}}) == {
        "audit_have": 3}
    copy = reports.audit("site-a")
    assert copy["entries"] == entries and copy["chain"] == "intact"
    assert reports.ledger("site-a") == {"digits": {"spent": 1.5}}
    assert reports.ledger("site-b") is None and reports.audit("site-b")["entries"] == []
    assert SiteReports(tmp_path / "sites").receive("site-a", {}) == {"audit_have": 3}


def test_site_audit_reads_any_site_yaml_and_says_when_there_is_no_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # warm: is a site.yaml key; site-audit refused it ("warm: unknown key"), and a state_dir
    # with no audit log printed an empty table as if no job had been offered
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"coordinator": "https://c", "state_dir": "state",
                                      "warm": False}))
    assert main_site_audit(str(config), as_json=False) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["TIME", "JOB", "SUBMITTER", "DECISION", "DATASET", "EPS", "REQ",
                           "EPS", "SPENT", "OUTCOME", "REASON"]
    assert err.strip() == (f"foedus: no audit log at {tmp_path / 'state' / 'audit.jsonl'}: this "
                           "site has not been offered a job yet (or state_dir is not the site's)")
