"""The Grafana dashboard, its provisioning and the Prometheus scrape config under deploy/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from foedus.mlops.metrics import CLIENT_METRICS, SERVER_METRICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "foedus.json"
_METRIC = re.compile(r"\bfoedus_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def dashboard_panels() -> list[tuple[str, list[str]]]:
    """(panel title, its PromQL expressions): a panel shows data when any of them returns some
    (client panels query both the clients' own endpoints and what the server saw of them)."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], [t["expr"] for t in p["targets"]]) for p in dash["panels"]]


def exported(name: str) -> bool:
    known = set(SERVER_METRICS) | set(CLIENT_METRICS)
    return name in known or any(
        name.endswith(s) and name[: -len(s)] in known for s in _SUFFIXES
    )


def test_every_metric_the_dashboard_queries_is_exported_by_foedus() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = {m for _, expr in queries for m in _METRIC.findall(expr)}
    assert sorted(m for m in used if not exported(m)) == []
    template = json.loads(DASHBOARD.read_text())["templating"]["list"][0]
    assert all(exported(m) for m in _METRIC.findall(template["definition"]))


def test_every_query_filters_on_the_job_variable() -> None:
    for title, expr in dashboard_queries():
        for selector in re.findall(r"foedus_[a-z0-9_]+(\{[^}]*\})?", expr):
            assert 'fl_job=~"$fl_job"' in selector, f"{title}: {expr}"


def test_panels_use_the_provisioned_datasource() -> None:
    provisioned: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"] if d["type"] == "prometheus"}
    dash = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} <= uids
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/foedus.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]


def test_the_prometheus_scrape_config_is_valid_and_its_labels_clash_with_none_of_ours(
) -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    scrape = yaml.safe_load(config.read_text())["scrape_configs"]
    assert [c["job_name"] for c in scrape] == ["foedus-server", "foedus-clients"]
    ours = {"fl_job", "fl_role", "actor", "client", "name", "reason", "status", "le"}
    target_labels = {k for c in scrape for s in c["static_configs"] for k in s.get("labels", {})}
    assert target_labels and not target_labels & ours  # a clash would rename ours exported_*
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    checked = subprocess.run([promtool, "check", "config", str(config)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
