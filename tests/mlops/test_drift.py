"""Evidently drift reports and the drift-monitor pod, on generated data with and without drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foedus.core.errors import ConfigError
from foedus.core.message import Kind
from foedus.mlops.drift import DriftMonitor, detect_drift, is_drift_event
from foedus.testing import make_message, run_pod

# evidently imports litestar, which warns about its own deprecations at import time
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _data(seed: int, shift: float = 0.0, rows: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    x[:, :3] += shift  # three of four features move
    return x


def test_shifted_data_is_reported_as_drift_with_the_drifted_columns() -> None:
    result = detect_drift(_data(0), _data(1, shift=1.5))
    assert result.drift_detected
    assert result.drifted_columns == 3
    assert result.share == pytest.approx(0.75)
    assert [c for c, d in result.columns.items() if d.drifted] == ["f0", "f1", "f2"]


def test_data_from_the_same_distribution_is_not_drift() -> None:
    result = detect_drift(_data(0), _data(1))
    assert not result.drift_detected
    assert result.share < 0.5


def test_reports_are_written_as_html_and_json(tmp_path: Path) -> None:
    result = detect_drift(_data(0), _data(1, shift=1.5), columns=["a", "b", "c", "d"])
    html = result.save_html(tmp_path / "r.html")
    data = json.loads(result.save_json(tmp_path / "r.json").read_text())
    assert "<html" in html.read_text()[:2000].lower()
    assert data["foedus"]["drift_detected"] is True
    assert set(data["foedus"]["columns"]) == {"a", "b", "c", "d"}
    assert any(m["config"]["type"].endswith("DriftedColumnsCount") for m in data["metrics"])


def test_mismatched_columns_are_refused() -> None:
    with pytest.raises(ConfigError, match="differ"):
        detect_drift(_data(0), _data(1)[:, :3], columns=None)
    with pytest.raises(ConfigError, match="drift_share"):
        detect_drift(_data(0), _data(1), drift_share=0)


def test_drift_monitor_pod_emits_a_drift_event_per_batch_without_rows(tmp_path: Path) -> None:
    monitor = DriftMonitor(job_id="j", client_id="client-007", reference=_data(0),
                           report_dir=tmp_path)
    out = run_pod(monitor, {"data": [
        make_message(Kind.METRICS, params={"x": _data(1)}, job_id="j", round=4),
        make_message(Kind.METRICS, params={"x": _data(2, shift=2.0)}, job_id="j", round=5),
    ]})
    calm, drifted = out["drift"]
    assert all(is_drift_event(e) for e in (calm, drifted))
    assert (calm.meta["drift_detected"], drifted.meta["drift_detected"]) == (False, True)
    assert drifted.sender == "client-007" and drifted.round == 5
    assert not drifted.params  # statistics only: no rows leave the client
    assert Path(drifted.meta["report_html"]).exists()
    assert json.loads(Path(drifted.meta["report_json"]).read_text())["foedus"]["share"] == 0.75
    assert sorted(p.name for p in (tmp_path / "client-007").iterdir()) == [
        "round-0004-batch-0001.html", "round-0004-batch-0001.json",
        "round-0005-batch-0002.html", "round-0005-batch-0002.json",
    ]
