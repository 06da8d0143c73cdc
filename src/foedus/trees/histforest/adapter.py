"""``federated-forest``: ONE random forest grown by all clients together on summed histograms.

Tree bagging (:mod:`foedus.trees.bagging`) lets every client grow whole trees on its own rows,
so each split sees a tenth of the data and the merged forest falls short of a central one. Here
the forest is grown level by level, and every split is chosen on histograms summed over all
clients, as federated gradient-boosting systems do: each split sees every client's rows.

This module is the client's side: the adapter a job file names. It measures
(:mod:`~foedus.trees.histforest.measure`), predicts (:mod:`~foedus.trees.histforest.predict`)
and reads and writes the model (:mod:`~foedus.trees.histforest.format`); the
``forest-histograms`` aggregator (:mod:`foedus.trees.histforest.aggregator`) grows the trees.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import (
    ModelAdapter,
    classification_metrics,
    models,
    regression_metrics,
)
from foedus.trees.histforest.format import MAX_BINS, MAX_TREES, Settings, initial, unpack
from foedus.trees.histforest.measure import bin_data, bootstrap_weights, histograms, sketch
from foedus.trees.histforest.predict import predict_proba, predict_value, route


class FederatedForestAdapter(ModelAdapter):
    """A client's view of the federated forest: it measures, the server grows. A classifier,
    or a regressor when the dataset's task is ``regression`` (metrics ``loss`` = MSE, ``r2``).

    ``fit`` fills in what the round asks for (quantile sketches in round 1, histograms of the
    open nodes afterwards) and changes nothing else; the ``forest-histograms`` aggregator turns
    the sums into splits. ``epochs`` is unused.
    """

    update_kind = "forest-histograms"

    def __init__(
        self, spec: DataSpec, *, seed: int = 0, n_estimators: int = 100,
        max_depth: int | None = None, min_samples_leaf: int = 1,
        max_features: str | int | float | None = "default", max_bins: int = 64,
        candidate_factor: float = 2.0, bootstrap: bool = True,
    ) -> None:
        if spec.task not in ("classification", "regression"):
            raise ConfigError(f"federated-forest supports classification and regression, "
                              f"got task {spec.task!r}")
        regression = spec.task == "regression"
        if not regression and len(spec.classes) < 2:
            raise ConfigError(f"a classifier needs at least two classes, got {spec.classes}")
        if not isinstance(n_estimators, int) or not 1 <= n_estimators <= MAX_TREES:
            raise ConfigError(f"n_estimators must be an integer in [1, {MAX_TREES}], "
                              f"got {n_estimators!r}")
        if max_depth is not None and (not isinstance(max_depth, int) or max_depth < 1):
            raise ConfigError(f"max_depth must be a positive integer or null, got {max_depth!r}")
        if not isinstance(min_samples_leaf, int) or min_samples_leaf < 1:
            raise ConfigError(f"min_samples_leaf must be a positive integer, "
                              f"got {min_samples_leaf!r}")
        if not isinstance(max_bins, int) or not 2 <= max_bins <= MAX_BINS:
            raise ConfigError(f"max_bins must be an integer in [2, {MAX_BINS}], got {max_bins!r}")
        if isinstance(candidate_factor, bool) or not (
                isinstance(candidate_factor, int | float) and candidate_factor >= 1):
            raise ConfigError(f"candidate_factor must be a number >= 1, got {candidate_factor!r}")
        d = spec.n_features
        if max_features == "default":  # scikit-learn's forests' default for the task
            max_features = 1.0 if regression else "sqrt"
        k = _max_features(max_features, d)
        self.spec = spec
        self.classes = np.asarray(spec.classes)
        self.settings = Settings(
            n_features=d, n_classes=0 if regression else len(self.classes), n_trees=n_estimators,
            max_depth=-1 if max_depth is None else max_depth, min_samples_leaf=min_samples_leaf,
            max_features=k, n_candidates=min(d, max(k, math.ceil(candidate_factor * k))),
            max_bins=max_bins, bootstrap=int(bool(bootstrap)), seed=int(seed) % 2**32,
            regression=int(regression),
        )
        self.state = initial(self.settings)

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.state.to_params().items()}

    def set_params(self, params: Params) -> None:
        """Load the global model after validating it; raises RejectedUpdate."""
        state = unpack(params)
        if state.settings != self.settings:
            raise RejectedUpdate("wrong_settings", f"the model's settings {state.settings} are "
                                                   f"not this job's {self.settings}")
        self.state = state

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        """Fill in this round's sketch or histograms from the local rows."""
        x, y = self._rows(data)
        state = self.state
        if state.sketching:
            quantiles, distinct, exact = sketch(x, self.settings.max_bins)
            self.state = replace(state, sketch=quantiles, distinct=distinct, exact=exact)
        elif len(state.frontier):
            weights = bootstrap_weights(x, y, self.settings)
            self.state = replace(state, hist=histograms(
                bin_data(x, state), y, weights, route(x, state), state))
        return self.evaluate(data)

    def evaluate(self, data: Dataset) -> dict[str, float]:
        """Accuracy and loss (regression: MSE as loss, and r2), and how far the forest has
        grown: ``nodes``, and ``open_nodes`` still to split (until round 1 has set the bins,
        every tree's root), so a job that ends with ``open_nodes`` above 0 shows it needed more
        rounds."""
        state = self.state
        if self.settings.regression:
            metrics = regression_metrics(predict_value(self._x(data.x), state), data.y)
        else:
            metrics = classification_metrics(predict_proba(self._x(data.x), state),
                                             np.asarray(data.y), self.classes)
        metrics["open_nodes"] = float(self.settings.n_trees if state.sketching
                                      else len(state.frontier))
        metrics["nodes"] = float(len(state.left))
        return metrics

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.settings.regression:
            return predict_value(self._x(x), self.state)
        return np.asarray(self.classes[np.argmax(predict_proba(self._x(x), self.state), axis=1)])

    def _x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.spec.n_features:
            raise ConfigError(f"expected data with {self.spec.n_features} features, "
                              f"got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ConfigError("federated-forest needs finite feature values (no NaN/Inf)")
        return x

    def _rows(self, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """The features and, per row, its class index or (regression) its finite target."""
        x = self._x(data.x)
        y = np.asarray(data.y)
        if self.settings.regression:
            target = np.asarray(y, dtype=np.float64).reshape(-1)
            if target.shape != (len(x),) or not np.isfinite(target).all():
                raise ConfigError("federated-forest regression needs one finite target per row")
            return x, target
        index = np.clip(np.searchsorted(self.classes, y), 0, len(self.classes) - 1)
        unknown = self.classes[index] != y
        if unknown.any():
            raise ConfigError(f"labels {np.unique(y[unknown]).tolist()} are not in the job's "
                              f"classes {self.classes.tolist()}")
        return x, index


def _max_features(value: str | int | float | None, d: int) -> int:
    """scikit-learn's ``max_features`` rule: sqrt, log2, a count, a fraction, or None (all)."""
    if value is None:
        return d
    if value == "sqrt":
        return max(1, int(math.sqrt(d)))
    if value == "log2":
        return max(1, int(math.log2(d)))
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= d:
        return value
    if isinstance(value, float) and 0 < value <= 1:
        return max(1, int(value * d))
    raise ConfigError(f"max_features must be 'default', 'sqrt', 'log2', an integer in [1, {d}], "
                      f"a fraction in (0, 1] or null, got {value!r}")


@models.register("federated-forest")
def _build(spec: DataSpec, seed: int = 0, **options: Any) -> FederatedForestAdapter:
    """A random forest grown by all clients together on summed histograms (classification or
    regression, by the dataset's task); pair it with the ``forest-histograms`` aggregator."""
    return FederatedForestAdapter(spec, seed=seed, **options)
