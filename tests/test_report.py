"""The per-round files a user asks for: a CSV with every round, a chart of its metrics."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from foedus.core.errors import ConfigError
from foedus.report import check_plot_path, plot, write_csv
from foedus.roles.server import RoundRecord

ROOT = Path(__file__).resolve().parents[1]
HISTORY = [
    RoundRecord(1, accepted=3, rejected={"stale_round": 1}, metrics={"accuracy": 0.5},
                bytes_in=300, bytes_out=100, duration_s=0.25),
    RoundRecord(2, accepted=0, status="no_quorum", missing_clients=3, metrics={"accuracy": 0.5}),
    RoundRecord(3, accepted=3, metrics={"accuracy": 0.8, "loss": 0.4}),
]


def test_the_csv_has_a_row_per_round_and_a_column_per_metric(tmp_path: Path) -> None:
    rows = list(csv.DictReader(write_csv(HISTORY, tmp_path / "h.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["rejected"] == "1" and rows[0]["bytes_in"] == "300"
    assert rows[1]["status"] == "no_quorum" and rows[1]["missing_clients"] == "3"
    assert [r["metric_loss"] for r in rows] == ["", "", "0.4"]  # a metric not reported: empty


@pytest.mark.parametrize(("name", "magic"), [("h.png", b"\x89PNG"), ("h.svg", b"<?xml")])
def test_the_chart_is_written_in_the_format_its_name_asks_for(
    tmp_path: Path, name: str, magic: bytes,
) -> None:
    pytest.importorskip("matplotlib")
    path = plot(HISTORY, tmp_path / name, title="job t")
    assert path.read_bytes().startswith(magic)


def test_a_chart_file_of_an_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--plot: 'h.pdf' must end in .png or .svg"):
        check_plot_path("h.pdf")


def test_foedus_run_writes_the_files_it_was_asked_for(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    csv_path, png = tmp_path / "rounds.csv", tmp_path / "rounds.png"
    done = subprocess.run(
        [sys.executable, "-m", "foedus.cli", "run", str(ROOT / "examples/digits-sklearn.yaml"),
         "--rounds", "2", "--history-csv", str(csv_path), "--plot", str(png)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(list(csv.DictReader(csv_path.open()))) == 2
    assert png.read_bytes().startswith(b"\x89PNG")
