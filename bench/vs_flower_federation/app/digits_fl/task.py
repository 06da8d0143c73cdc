"""The model and data shared by the ServerApp and the ClientApp.

The same model and training as foedus's ``sklearn-sgd`` (``foedus.models.sklearn``):
``SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.05)``, weights
as two arrays (``coef``, ``intercept``), one epoch of ``partial_fit`` per round over the rows
in an order drawn from a generator seeded by (job seed, client, round), the step counter reset
each round. The data file is written by ``run.py`` from foedus's own job builder (the same
IID shares and test split the foedus job trains on), so this app needs only numpy and
scikit-learn.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

SEED = 3  # bench/federation.py's job (foedus.federation.demo.LocalFederation.job)


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def share(data: dict[str, np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = int(data["offsets"][index]), int(data["offsets"][index + 1])
    return data["x"][a:b], data["y"][a:b]


def round_seed(index: int, rnd: int) -> int:
    """foedus's ``task_seed(seed, client_id, round)``, restated (this venv has no foedus)."""
    digest = hashlib.blake2b(f"{SEED}/client-{index:03d}/{rnd}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


def model(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray) -> Any:
    from sklearn.linear_model import SGDClassifier

    clf = SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.05,
                        random_state=SEED)
    clf.coef_, clf.intercept_, clf.classes_ = coef.copy(), intercept.copy(), classes
    clf.t_ = 1.0
    return clf


def train(clf: Any, x: np.ndarray, y: np.ndarray, classes: np.ndarray, seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(y))
    clf.partial_fit(np.asarray(x[order], dtype=np.float64), y[order], classes=classes)


def stamp(path: str, what: str, extra: str = "") -> None:
    """Append ``WHAT WALL-CLOCK-TIME [EXTRA]`` to run.py's stamp file (one short append, atomic
    enough for the few writers of one run)."""
    with open(path, "a") as out:
        out.write(f"{what} {time.time():.6f} {extra}".rstrip() + "\n")
