"""The vertical model: a linear score over every party's columns, and its centralized twin.

Party ``k`` holds columns ``X_k`` of the aligned rows and its own weights ``W_k``; the label
party also holds the labels and the bias. The score of a row is ``z = b + sum_k X_k W_k``
(one column per output: one for a binary or a regression task, one per class otherwise), the
prediction its sigmoid, softmax or identity. Full-batch gradient descent needs, per party,
``X_k^T R / n`` with ``R = prediction - y`` (the residuals, which the vertical protocol keeps
encrypted from the feature parties). :func:`fit_centralized` runs the very same steps on the
joined columns in one place: the twin the vertical run must match (it does, up to the
protocol's fixed-point rounding, ``2**-32`` by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from foedus.core.errors import ConfigError
from foedus.data.datasets import DataSpec

KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Task:
    """What the label party predicts: ``kind`` (one of :data:`KINDS`) and the classes."""

    kind: str
    classes: tuple[int, ...] = ()

    @property
    def outputs(self) -> int:
        """Score columns: one for binary and regression, one per class for multiclass."""
        return len(self.classes) if self.kind == "multiclass" else 1

    @classmethod
    def of(cls, spec: DataSpec) -> Task:
        """The task a dataset poses (every party derives the same one from the job file)."""
        if spec.task == "regression":
            return cls("regression")
        if len(spec.classes) < 2:
            raise ConfigError(f"data: a classification needs two classes or more, got "
                              f"{list(spec.classes)}")
        return cls("binary" if len(spec.classes) == 2 else "multiclass", tuple(spec.classes))

    def targets(self, y: np.ndarray) -> np.ndarray:
        """Labels as a ``(n, outputs)`` float matrix: 0/1, one-hot, or the values."""
        if self.kind == "regression":
            return np.asarray(y, np.float64).reshape(-1, 1)
        index = np.searchsorted(np.asarray(self.classes), np.asarray(y))
        if self.kind == "binary":
            return index.astype(np.float64).reshape(-1, 1)
        return np.eye(self.outputs)[index]

    def predict(self, z: np.ndarray) -> np.ndarray:
        """Probabilities (sigmoid, softmax) or values from scores ``(n, outputs)``."""
        if self.kind == "regression":
            return z
        if self.kind == "binary":
            return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))  # type: ignore[no-any-return]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def residuals(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``prediction - target``: the loss's gradient with respect to the scores."""
        return self.predict(z) - self.targets(y)  # type: ignore[no-any-return]

    def labels(self, z: np.ndarray) -> np.ndarray:
        """Predicted labels (classification) or values (regression), one per row."""
        if self.kind == "regression":
            return z[:, 0]  # type: ignore[no-any-return]
        if self.kind == "binary":
            return np.asarray(self.classes)[(z[:, 0] > 0).astype(np.int64)]
        return np.asarray(self.classes)[z.argmax(axis=1)]  # type: ignore[no-any-return]

    def metrics(self, z: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """accuracy and log-loss, or MSE (``loss``) and r2: the names every foedus model uses."""
        if len(y) == 0:
            return {}
        if self.kind == "regression":
            truth = np.asarray(y, np.float64)
            mse = float(np.mean((z[:, 0] - truth) ** 2))
            var = float(np.var(truth))
            return {"loss": mse, "r2": 1.0 - mse / var if var > 0 else 0.0}
        p = np.clip(self.predict(z), 1e-12, 1 - 1e-12)
        t = self.targets(y)
        if self.kind == "binary":
            loss = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
        else:
            loss = -np.mean(np.sum(t * np.log(p), axis=1))
        return {"accuracy": float(np.mean(self.labels(z) == np.asarray(y))), "loss": float(loss)}


@dataclass
class Fit:
    """A centrally trained twin: weights ``(d, outputs)``, bias ``(outputs,)``."""

    weights: np.ndarray
    bias: np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weights + self.bias  # type: ignore[no-any-return]


def fit_centralized(x: np.ndarray, y: np.ndarray, task: Task, *, rounds: int,
                    learning_rate: float) -> Fit:
    """Full-batch gradient descent from zero weights on the joined columns: exactly the
    vertical protocol's steps, one per round, with nothing split or encrypted."""
    x = np.asarray(x, np.float64)
    fit = Fit(np.zeros((x.shape[1], task.outputs)), np.zeros(task.outputs))
    for _ in range(rounds):
        r = task.residuals(fit.scores(x), y)
        fit.weights = fit.weights - learning_rate * (x.T @ r) / len(x)
        fit.bias = fit.bias - learning_rate * r.mean(axis=0)
    return fit


def partial_scores(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One party's share of the scores of its rows: ``X_k W_k``. What it sends, never ``X_k``."""
    return np.asarray(x, np.float64) @ np.asarray(weights, np.float64)  # type: ignore[no-any-return]


def predict(parts: Mapping[str, tuple[Sequence[str], np.ndarray]],
            weights: Mapping[str, np.ndarray], bias: np.ndarray, task: Task,
            ) -> tuple[list[str], np.ndarray]:
    """Predict for new entities, each party holding its own columns of them.

    ``parts`` maps each party to ``(ids, x)``: its rows of the new entities under their shared
    ids, in any order; ``weights`` maps each party to its trained ``W_k``. Each party computes
    its partial scores for the ids it holds (:func:`partial_scores`, which is all it would send
    over a network), and the label party adds them with the bias. Only entities every party
    holds can be scored (a missing party's columns have no stand-in); the result is those ids,
    sorted, and their predicted labels or values.
    """
    missing = sorted(set(parts) ^ set(weights))
    if missing:
        raise ConfigError(f"predict: parties {missing} have data or weights but not both")
    shared = sorted(set.intersection(*(set(ids) for ids, _ in parts.values())))
    z = np.tile(np.asarray(bias, np.float64), (len(shared), 1))
    for name, (ids, x) in parts.items():
        row = {entity: i for i, entity in enumerate(ids)}
        scores = partial_scores(np.asarray(x)[[row[e] for e in shared]], weights[name])
        z = z + scores.reshape(len(shared), task.outputs)
    return shared, task.labels(z)
