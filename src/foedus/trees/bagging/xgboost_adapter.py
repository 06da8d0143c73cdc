"""``xgboost-bagging``: each client boosts an XGBoost booster on its rows; the global model
averages the clients' boosters.

This is the client side of booster bagging: it trains, blanks the per-node training statistics
XGBoost stores (``sum_hessian``, ``loss_changes``: prediction does not read them and they
describe the client's data), packs the booster in the format of
:mod:`foedus.trees.bagging.packed_boosters`, and predicts with a received ensemble only after
that module has checked it. ``xgboost`` is imported lazily (extra ``xgboost``; the CPU-only
wheel ``xgboost-cpu`` provides the same ``import xgboost``).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate, require
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import (
    ModelAdapter,
    ensemble_metrics,
    hold_out,
    models,
    regression_metrics,
)
from foedus.trees.bagging.header import TASKS
from foedus.trees.bagging.packed_boosters import (
    OBJECTIVES,
    PackedBoosters,
    empty,
    from_models,
    unpack,
)

#: the extra this module's plugin needs (`pip install foedus[xgboost]`), for `foedus plugins`
REQUIRES_EXTRA = "xgboost"

#: XGBoost options the adapter changes from XGBoost's defaults for bagging small clients
#: (measured in ``bench/models.py``, digits, 10 clients: -4.6 -> -1.6 points against one
#: central booster at XGBoost's defaults): a client of ~150 rows has tiny hessian sums, so the
#: default ``min_child_weight=1`` stops its trees early; sampling a fifth of the features per
#: split makes the clients' boosters disagree more, which is what bagging averages away
FEDERATED_DEFAULTS: dict[str, Any] = {"min_child_weight": 0.1, "colsample_bynode": 0.2}
_BLANKED = ("sum_hessian", "loss_changes")  # training statistics, unused by prediction


@models.register("xgboost-bagging")
class XGBoostBaggingAdapter(ModelAdapter):
    """Each client boosts locally; the global model averages the clients' boosters.

    ``num_boost_round`` is the number of boosting rounds per local booster; ``params`` are
    passed to ``xgboost.train`` (``max_depth``, ``eta``, ...; ``nthread`` defaults to 1 since
    simulated clients share the machine; :data:`FEDERATED_DEFAULTS` fill what is not given).
    The objective follows the dataset's task (``multi:softprob`` for classifiers,
    ``reg:squarederror`` for regressors; another allowed regression objective may be named).
    ``validation_fraction`` of a client's rows is held out to score its booster (accuracy or
    R^2) for the aggregator's ``select``/``weight: score``; with 0 (default: every row trains)
    the score is on training rows and optimistic.
    """

    update_kind = "tree-ensemble"

    def __init__(
        self, spec: DataSpec, *, seed: int = 0, num_boost_round: int = 20,
        validation_fraction: float = 0.0, params: dict[str, Any] | None = None,
    ) -> None:
        require("xgboost", "xgboost")
        if (isinstance(num_boost_round, bool) or not isinstance(num_boost_round, int)
                or num_boost_round < 1):
            raise ConfigError(f"num_boost_round must be an integer >= 1, got {num_boost_round!r}")
        fraction = validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
                0 <= fraction < 1):
            raise ConfigError(f"validation_fraction must be a number in [0, 1), "
                              f"got {validation_fraction!r}")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"params: expected a mapping of XGBoost options, got {params!r}")
        if spec.task not in TASKS:
            raise ConfigError(f"unsupported task {spec.task!r}; allowed: {TASKS}")
        if spec.task == "classification" and len(spec.classes) < 2:
            raise ConfigError(f"a classifier needs at least two classes, got {spec.classes}")
        self.spec = spec
        self.classes = np.asarray(spec.classes)
        self.n_values = len(self.classes) if spec.task == "classification" else 1
        self.num_boost_round = num_boost_round
        self.validation_fraction = validation_fraction
        options = dict(params or {})
        for fixed in ("num_class", "seed", "random_state"):
            if fixed in options:
                raise ConfigError(f"xgboost-bagging sets {fixed!r} itself; remove it from params")
        objective = options.setdefault("objective", OBJECTIVES[spec.task][0])
        if objective not in OBJECTIVES[spec.task]:
            raise ConfigError(f"objective {objective!r} not allowed for {spec.task}; allowed: "
                              f"{OBJECTIVES[spec.task]}")
        if spec.task == "classification":
            options["num_class"] = self.n_values
        for key, value in FEDERATED_DEFAULTS.items():
            options.setdefault(key, value)
        options.setdefault("nthread", 1)
        options.setdefault("verbosity", 0)
        self.options = options
        self._check_options()
        self._round_seed = [seed, 0]
        self._load(empty(spec.n_features, self.n_values, spec.task))

    def _check_options(self) -> None:
        """Boost one round on a few rows of zeros now, so XGBoost judges ``params`` before the
        job starts: a value it refuses, or a name it does not use, is a ``ConfigError``.

        The adapter trains with ``verbosity: 0``, under which XGBoost drops its "parameters
        are not used" warning: a misspelt ``max_dept`` was ignored without a word, and a bad
        value surfaced only as every client failing round 1.
        """
        import xgboost

        rows = max(self.n_values, 2)
        labels = (np.arange(rows) % self.n_values if self.spec.task == "classification"
                  else np.zeros(rows))
        data = xgboost.DMatrix(np.zeros((rows, self.spec.n_features), dtype=np.float32),
                               label=labels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                xgboost.train({**self.options, "verbosity": 1}, data, num_boost_round=1)
            except xgboost.core.XGBoostError as exc:
                text = next((line.strip() for line in str(exc).splitlines()
                             if line.strip() and not line.lstrip().startswith("[bt]")),
                            str(exc))
                raise ConfigError(f"params: XGBoost refuses them: {text}") from exc
        for warning in caught:
            unused = re.search(r"Parameters: \{ (.*?) \} are not used", str(warning.message))
            if unused:
                raise ConfigError(f"params: XGBoost does not use {unused.group(1)}; see "
                                  "https://xgboost.readthedocs.io/en/stable/parameter.html")

    def begin_round(self, seed: int) -> None:
        """Seed the round's hold-out split and the booster's randomness."""
        self._round_seed = [seed, 0]

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.ensemble.to_params().items()}

    def set_params(self, params: Params) -> None:
        """Load a (merged) ensemble after validating every booster; raises RejectedUpdate."""
        self._load(unpack(params, n_features=self.spec.n_features, n_values=self.n_values,
                          task=self.spec.task))

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        """Boost a fresh local booster (``epochs`` is unused: see ``num_boost_round``)."""
        import xgboost

        metrics: dict[str, float] = {}
        if self.ensemble.n_trees:  # how every client evaluates the merged model
            metrics.update({f"global_{k}": v for k, v in self.evaluate(data).items()})
        rng = np.random.default_rng(self._round_seed)
        train, val = hold_out(data, self.validation_fraction, rng)
        options = {**self.options, "seed": int(rng.integers(2**31 - 1))}
        booster = xgboost.train(options, xgboost.DMatrix(np.asarray(train.x, dtype=np.float32),
                                                         label=self._labels(train.y)),
                                num_boost_round=self.num_boost_round)
        raw = _blank_statistics(bytes(booster.save_raw("json")))
        local = from_models(self.spec.n_features, self.n_values, self.spec.task, [raw])
        self._load(local)
        score = self._score(self.predict_values(np.asarray(val.x)), val.y)
        self._load(replace(local, score=np.array([score])))
        self._round_seed[-1] += 1
        metrics.update(self.evaluate(train))
        metrics["validation_score"] = score
        return metrics

    def evaluate(self, data: Dataset) -> dict[str, float]:
        return ensemble_metrics(self.predict_values(np.asarray(data.x)), data.y,
                                self.spec.task, self.classes)

    def predict_values(self, x: np.ndarray) -> np.ndarray:
        """Weighted mean of the boosters' class probabilities, or ``(n, 1)`` predictions."""
        import xgboost

        if x.ndim != 2 or x.shape[1] != self.spec.n_features:
            raise ConfigError(f"expected data with {self.spec.n_features} features, "
                              f"got shape {x.shape}")
        weight = self.ensemble.weight
        if not self.ensemble.n_trees or weight.sum() <= 0:
            fill = 1.0 / self.n_values if self.spec.task == "classification" else 0.0
            return np.full((len(x), self.n_values), fill)
        matrix = xgboost.DMatrix(np.asarray(x, dtype=np.float32))
        outputs = [np.asarray(b.predict(matrix), dtype=np.float64).reshape(len(x), -1)
                   for b in self._boosters]
        return np.asarray(np.tensordot(weight / weight.sum(), np.stack(outputs), axes=1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        values = self.predict_values(x)
        if self.spec.task == "classification":
            return np.asarray(self.classes[np.argmax(values, axis=1)])
        return values[:, 0]

    # ---- internals -----------------------------------------------------------------------
    def _labels(self, y: np.ndarray) -> np.ndarray:
        if self.spec.task == "regression":
            return np.asarray(y, dtype=np.float32)
        index = np.searchsorted(self.classes, y)
        if (self.classes[np.clip(index, 0, len(self.classes) - 1)] != y).any():
            raise ConfigError(f"labels {np.unique(y).tolist()} are not all in the job's classes "
                              f"{self.classes.tolist()}")
        return index.astype(np.float32)

    def _load(self, ensemble: PackedBoosters) -> None:
        import xgboost

        boosters = []
        for b in range(ensemble.n_trees):
            booster = xgboost.Booster(params={"nthread": self.options["nthread"]})
            try:
                booster.load_model(bytearray(ensemble.booster_bytes(b)))
            except xgboost.core.XGBoostError as exc:
                raise RejectedUpdate("bad_booster", f"XGBoost refused booster {b}: "
                                                    f"{str(exc).splitlines()[0]}") from exc
            boosters.append(booster)
        self.ensemble = ensemble
        self._boosters = boosters

    def _score(self, values: np.ndarray, y: np.ndarray) -> float:
        if self.spec.task == "classification":
            return float(np.mean(self.classes[np.argmax(values, axis=1)] == y))
        r2 = regression_metrics(values[:, 0], y)["r2"]
        return r2 if np.isfinite(r2) else 0.0


def _blank_statistics(raw: bytes) -> bytes:
    """Zero the per-node training statistics XGBoost saves; prediction does not read them."""
    doc = json.loads(raw)
    for tree in doc["learner"]["gradient_booster"]["model"]["trees"]:
        for key in _BLANKED:
            tree[key] = [0.0] * len(tree[key])
    return json.dumps(doc, separators=(",", ":")).encode()
