"""A job's rounds as files people open: a CSV table and a chart of the per-round metrics.

``foedus run|server|actor|sim --history-csv FILE --plot FILE`` write them at the end of a job, so
the accuracy curve needs no code. The CSV has one row per round (the round record's counts, bytes,
duration, status, and every metric as a ``metric_<name>`` column); the chart (PNG or SVG, by the
file's extension, drawn with matplotlib: the ``plot`` extra) has one panel per metric.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from foedus.core.errors import ConfigError, require
from foedus.roles.server import RoundRecord

#: columns of the CSV before the metrics, in this order
COLUMNS = ("round", "status", "accepted", "rejected", "failed_clients", "missing_clients",
           "bytes_in", "bytes_out", "duration_s")
PLOT_FORMATS = (".png", ".svg")


def metric_names(history: Sequence[RoundRecord]) -> list[str]:
    """Every metric any round reported, sorted."""
    return sorted({name for r in history for name in r.metrics})


def write_csv(history: Sequence[RoundRecord], path: str | Path) -> Path:
    """One row per round; a metric a round did not report is left empty."""
    path = Path(path)
    names = metric_names(history)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*COLUMNS, *(f"metric_{n}" for n in names)])
        for r in history:
            writer.writerow([
                r.round, r.status, r.accepted, sum(r.rejected.values()), len(r.failed_clients),
                r.missing_clients, r.bytes_in, r.bytes_out, f"{r.duration_s:.6f}",
                *(r.metrics.get(n, "") for n in names),
            ])
    return path


def check_plot_path(path: str | Path) -> Path:
    """Refuse, before the job runs, a chart file whose format is not known."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConfigError(f"--plot: {path.name!r} must end in {' or '.join(PLOT_FORMATS)}")
    return path


def plot(history: Sequence[RoundRecord], path: str | Path, *, title: str = "") -> Path:
    """One panel per metric against the round; rounds without a new model are marked."""
    path = check_plot_path(path)
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = {n: [r.metrics.get(n, float("nan")) for r in history]
              for n in metric_names(history)} or {"accepted": [r.accepted for r in history]}
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series)), sharex=True,
                             squeeze=False)
    rounds = [r.round for r in history]
    for ax, (name, values) in zip(axes[:, 0], series.items(), strict=True):
        ax.plot(rounds, values, marker="o", markersize=3)
        failed = [(r.round, v) for r, v in zip(history, values, strict=True) if r.status != "ok"]
        if failed:
            ax.scatter(*zip(*failed, strict=True), color="red", zorder=3, label="no new model")
            ax.legend(loc="best", fontsize="small")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("round")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
