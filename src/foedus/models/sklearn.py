"""scikit-learn adapter for linear classifiers trained by SGD.

Clients must agree on the label set up front: a client that never sees class 7 still keeps a row
of coefficients for it, so every update has the same shape and averaging stays meaningful. The
adapter passes the full ``classes`` to ``partial_fit``, which is exactly what scikit-learn's
incremental API needs for that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foedus.core.errors import ConfigError
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import ModelAdapter, models


class SklearnSGDClassifier(ModelAdapter):
    """``sklearn.linear_model.SGDClassifier`` (logistic loss by default) as named arrays."""

    def __init__(
        self, spec: DataSpec, *, seed: int = 0, loss: str = "log_loss", alpha: float = 1e-4,
        learning_rate: str = "optimal", eta0: float = 0.01, **options: Any,
    ) -> None:
        from sklearn.linear_model import SGDClassifier

        if len(spec.classes) < 2:
            raise ConfigError(f"a classifier needs at least two classes, got {spec.classes}")
        self.classes = np.asarray(spec.classes)
        self.model = SGDClassifier(
            loss=loss, alpha=alpha, learning_rate=learning_rate, eta0=eta0, random_state=seed,
            **options,
        )
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        self.model.coef_ = np.zeros((rows, spec.n_features))
        self.model.intercept_ = np.zeros(rows)
        self.model.classes_ = self.classes

    def get_params(self) -> dict[str, np.ndarray]:
        return {"coef": self.model.coef_.copy(), "intercept": self.model.intercept_.copy()}

    def set_params(self, params: Params) -> None:
        self.model.coef_ = np.array(params["coef"], dtype=np.float64)
        self.model.intercept_ = np.array(params["intercept"], dtype=np.float64)

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        rng = np.random.default_rng(int(getattr(self.model, "t_", 0)))
        for _ in range(epochs):
            order = rng.permutation(len(data))
            x = np.asarray(data.x[order], dtype=np.float64)  # SGD's Cython core wants float64
            self.model.partial_fit(x, data.y[order], classes=self.classes)
        return {"loss": self.evaluate(data)["loss"]}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        from sklearn.metrics import log_loss

        accuracy = float(np.mean(self.model.predict(data.x) == data.y))
        if self.model.loss in ("log_loss", "modified_huber"):  # losses with probabilities
            proba = self.model.predict_proba(data.x)
            loss = float(log_loss(data.y, proba, labels=self.classes))
        else:
            loss = 1.0 - accuracy
        return {"loss": loss, "accuracy": accuracy}


@models.register("sklearn-sgd")
def sklearn_sgd(spec: DataSpec, seed: int = 0, **options: Any) -> SklearnSGDClassifier:
    """Logistic regression by SGD; options go to ``SGDClassifier``."""
    return SklearnSGDClassifier(spec, seed=seed, **options)
