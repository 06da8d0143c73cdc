"""Data drift with Evidently: per-client reports, a drift-monitor pod, and a drift event.

Drift is measured where the data lives: a :class:`DriftMonitor` runs in a client's graph, holds
the reference data the model was trained on, and compares each new batch of local data against
it with Evidently's ``DataDriftPreset``. It writes the report (HTML and JSON) to a local
directory and emits a small **drift event** (a ``Kind.METRICS`` message with statistics only,
never rows), which may be sent to the server like any other message. The continual-learning loop
that reacts to these events is in :mod:`foedus.mlops.continual`.

Evidently 0.7 is imported lazily (extra ``drift``; install it with ``'pandas<3'``, as pandas 3
breaks ``import evidently`` 0.7.23).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import ConfigError, require
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire


@dataclass(frozen=True)
class ColumnDrift:
    """One feature's drift score as Evidently computed it."""

    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    """The outcome of comparing current data with reference data."""

    drift_detected: bool
    drifted_columns: int
    share: float
    drift_share: float
    columns: dict[str, ColumnDrift]
    rows_reference: int
    rows_current: int
    snapshot: Any = field(default=None, repr=False)  # Evidently's Snapshot, for the reports

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary: statistics about the data, never the data itself."""
        return {
            "drift_detected": self.drift_detected, "drifted_columns": self.drifted_columns,
            "share": self.share, "drift_share": self.drift_share,
            "rows_reference": self.rows_reference, "rows_current": self.rows_current,
            "columns": {k: vars(v) for k, v in self.columns.items()},
        }

    def save_html(self, path: str | Path) -> Path:
        """Evidently's self-contained HTML report (it needs no network to view)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(out))
        return out

    def save_json(self, path: str | Path) -> Path:
        """Evidently's JSON snapshot, with foedus' summary under the key ``foedus``."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = self.snapshot.dict()
        data["foedus"] = self.summary()
        out.write_text(json.dumps(data, default=str))
        return out


def _frame(data: Any, columns: Sequence[str] | None, what: str) -> Any:
    pd = require("pandas", "drift")
    if isinstance(data, pd.DataFrame):
        return data
    array = np.asarray(data)
    if array.ndim != 2:
        raise ConfigError(f"{what}: expected a 2-D table of features, got shape {array.shape}")
    names = list(columns) if columns is not None else [f"f{i}" for i in range(array.shape[1])]
    if len(names) != array.shape[1]:
        raise ConfigError(f"{what}: {array.shape[1]} columns but {len(names)} column names")
    return pd.DataFrame(array, columns=names)


def detect_drift(
    reference: Any, current: Any, *, columns: Sequence[str] | None = None,
    drift_share: float = 0.5, method: str | None = None, threshold: float | None = None,
) -> DriftResult:
    """Compare ``current`` data with ``reference`` (arrays or DataFrames with the same columns).

    The dataset drifts when at least ``drift_share`` of the columns drift (Evidently's rule).
    ``method`` and ``threshold`` go to Evidently's ``DataDriftPreset`` (default: it picks a test
    per column type and size, e.g. Kolmogorov-Smirnov for small numeric samples).
    """
    if not 0 < drift_share <= 1:
        raise ConfigError(f"drift_share: expected a fraction in (0, 1], got {drift_share}")
    evidently = require("evidently", "drift")
    presets = require("evidently.presets", "drift")
    ref = _frame(reference, columns, "reference data")
    cur = _frame(current, columns, "current data")
    if list(ref.columns) != list(cur.columns):
        raise ConfigError(
            f"current data columns {list(cur.columns)} differ from reference {list(ref.columns)}"
        )
    if len(ref) < 2 or len(cur) < 2:
        raise ConfigError("drift needs at least 2 rows of reference and of current data")
    options: dict[str, Any] = {"drift_share": drift_share}
    if method is not None:
        options["method"] = method
    if threshold is not None:
        options["threshold"] = threshold
    snapshot = evidently.Report([presets.DataDriftPreset(**options)]).run(cur, ref)  # current 1st
    count, share = 0, 0.0
    per_column: dict[str, ColumnDrift] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            count, share = int(metric["value"]["count"]), float(metric["value"]["share"])
        elif kind.endswith("ValueDrift"):
            score, limit = float(metric["value"]), float(config["threshold"])
            name = str(config["method"])
            # p-value tests drift when the p-value is small; distances when they are large
            drifted = score < limit if "p_value" in name else score >= limit
            per_column[str(config["column"])] = ColumnDrift(score, name, limit, drifted)
    return DriftResult(
        drift_detected=share >= drift_share, drifted_columns=count, share=share,
        drift_share=drift_share, columns=per_column, rows_reference=len(ref),
        rows_current=len(cur), snapshot=snapshot,
    )


def is_drift_event(msg: Message) -> bool:
    return msg.kind is Kind.METRICS and msg.meta.get("event") == "drift"


class DriftMonitor(Pod):
    """Watches one client's new local data for drift against its reference data.

    Input ``data``: messages whose params hold the new rows as array ``x`` (from whatever
    collects the client's data, inside its premises). Output ``drift``: a drift event per
    checked batch (``meta.event == "drift"``, ``meta.drift_detected``, the share of drifted
    columns and where the reports were written), carrying no rows. Reports go to
    ``report_dir/<client>/round-...-batch-N.{html,json}`` when ``report_dir`` is set.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("data"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("drift"),)
    blocking: ClassVar[bool] = True

    def __init__(
        self, *, job_id: str, client_id: str, reference: Any,
        columns: Sequence[str] | None = None, drift_share: float = 0.5,
        method: str | None = None, threshold: float | None = None,
        report_dir: str | Path | None = None, html: bool = True, name: str = "drift",
    ) -> None:
        super().__init__(name)
        self.job_id = job_id
        self.client_id = client_id
        self.reference = np.asarray(reference) if not hasattr(reference, "columns") else reference
        self.columns = list(columns) if columns is not None else None
        self.drift_share = drift_share
        self.method = method
        self.threshold = threshold
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.html = html
        self.batches = 0
        self.last: DriftResult | None = None

    def check(self, current: Any, *, round: int = 0) -> Message:
        """Compare ``current`` with the reference, write reports, and return the drift event."""
        result = detect_drift(
            self.reference, current, columns=self.columns, drift_share=self.drift_share,
            method=self.method, threshold=self.threshold,
        )
        self.batches += 1
        self.last = result
        meta: dict[str, Any] = {
            "event": "drift", "client": self.client_id, "batch": self.batches,
            "drift_detected": result.drift_detected, "drifted_columns": result.drifted_columns,
            "share": result.share, "checked_at": time.time(),
        }
        if self.report_dir is not None:
            stem = self.report_dir / self.client_id / f"round-{round:04d}-batch-{self.batches:04d}"
            meta["report_json"] = str(result.save_json(stem.with_suffix(".json")))
            if self.html:
                meta["report_html"] = str(result.save_html(stem.with_suffix(".html")))
        return Message.create(
            Kind.METRICS, job_id=self.job_id, round=round, sender=self.client_id,
            metrics={"drift_share": result.share,
                     "drift_detected": float(result.drift_detected)},
            meta=meta,
        )

    def on_data(self, msg: Message) -> None:
        if "x" not in msg.params:
            raise ConfigError(f"{self.name}: a data message must carry its rows as params['x']")
        self.emit("drift", self.check(msg.params["x"], round=msg.round))
