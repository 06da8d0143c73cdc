"""Shared by the data tests: digits written out as one CSV per client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foedus.config.parts import client_id
from foedus.data.datasets import load_dataset
from foedus.data.partition import iid_partition

PIXELS = [f"p{i}" for i in range(64)]


def digits_files(tmp_path: Path, clients: int) -> tuple[str, str]:
    """Digits split IID into one CSV per client plus a held-out CSV for the server; returns the
    per-client path template and the hold-out's path."""
    train, test, _ = load_dataset("digits", seed=0)

    def write(x: np.ndarray, y: np.ndarray, name: str) -> None:
        frame = pd.DataFrame(x, columns=PIXELS).assign(digit=y)
        frame.to_csv(tmp_path / f"{name}.csv", index=False)

    for i, rows in enumerate(iid_partition(train.y, clients, seed=0)):
        write(train.x[rows], train.y[rows], client_id(i))
    write(test.x, test.y, "holdout")
    return str(tmp_path / "{client}.csv"), str(tmp_path / "holdout.csv")
