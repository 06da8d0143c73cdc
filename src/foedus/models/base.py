"""The model adapter contract: a local ML framework seen as named arrays.

An adapter wraps one party's model and speaks numpy to the rest of foedus: get and set named
parameter arrays, fit on local data, evaluate to metrics. Frameworks stay behind their extras and
are imported only when an adapter for them is built.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import threading
from collections.abc import Callable
from typing import Any, ClassVar, ParamSpec, TypeVar

import numpy as np

from foedus.core.errors import ConfigError
from foedus.core.params import Params
from foedus.core.registry import Registry
from foedus.data.datasets import Dataset, DataSpec

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Held while an adapter calls into scikit-learn. Its parallel helpers save, clear and restore
#: the process-wide warning filters around every task (``warnings.catch_warnings`` is not
#: thread-safe before Python 3.14), so clients training scikit-learn models on threads of one
#: process could empty or swap each other's filters: seen as bursts of "`sklearn.utils.parallel.
#: delayed` should be used with `sklearn.utils.parallel.Parallel`" warnings, and worse, filters
#: left changed for the whole process. Such clients take turns; process-backed workers do not
#: share the lock.
SKLEARN_LOCK = threading.RLock()


def sklearn_exclusive(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``method`` holding :data:`SKLEARN_LOCK`."""
    @functools.wraps(method)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with SKLEARN_LOCK:
            return method(*args, **kwargs)
    return locked


def mlp_options(hidden: Any, lr: Any, batch_size: Any, mu: Any) -> tuple[int, ...]:
    """Check the shared options of the ``torch-mlp`` and ``keras-mlp`` factories; returns the
    hidden layer widths (a lone integer is one layer).

    Without it a string ``hidden: "64"`` built layers of width 6 and 4, a negative ``lr``
    trained to chance and exited 0, and a string ``batch_size`` failed with
    "'<' not supported between instances of 'str' and 'int'".
    """
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    widths = [hidden] if isinstance(hidden, int) and not isinstance(hidden, bool) else hidden
    if (not isinstance(widths, list | tuple) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
        raise ConfigError(f"hidden: expected a list of layer widths >= 1 such as [64, 32], "
                          f"got {hidden!r}")
    if not number(lr) or not lr >= 0:  # 0 is allowed: a frozen model, trained by nobody
        raise ConfigError(f"lr: expected a number >= 0, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if not number(mu) or not mu >= 0:
        raise ConfigError(f"mu: expected a number >= 0 (the FedProx term; 0: off), got {mu!r}")
    return tuple(widths)


def sklearn_estimator(cls: Any, **params: Any) -> Any:
    """``cls(**params)``, a scikit-learn estimator whose parameters are checked now.

    scikit-learn checks parameter values only when ``fit`` runs, which in a federated job is on
    every client in round 1: a job file with ``alpha: "1e-4"`` (a string) passed every check,
    then each client failed training and the job ended without a model. Checking here turns
    that into one ``ConfigError`` naming the parameter before anything starts, and a misspelt
    name into one listing the estimator's parameters.
    """
    allowed = cls._get_param_names()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{cls.__name__} got an unexpected keyword argument {unknown[0]!r}; "
                          f"allowed: {', '.join(allowed)}")
    estimator = cls(**params)
    validate = getattr(estimator, "_validate_params", None)  # scikit-learn 1.2 and later
    if validate is not None:
        try:
            validate()
        except (TypeError, ValueError) as exc:  # InvalidParameterError is both
            raise ConfigError(str(exc)) from exc
    return estimator


class ModelAdapter(abc.ABC):
    """One party's model. Implementations must not share state between instances."""

    #: what the model's updates are, so a job pairs it with an aggregator that can combine them
    #: (:attr:`foedus.Aggregator.update_kind`): ``"parameters"`` (named arrays to average or
    #: combine robustly), or the kind a tree family's adapter and aggregator share
    update_kind: ClassVar[str] = "parameters"

    @abc.abstractmethod
    def get_params(self) -> dict[str, np.ndarray]:
        """Current parameters by name (a copy the caller may keep)."""

    def peek_params(self) -> Params:
        """Current parameters, possibly sharing memory with the model: valid only until the
        model next changes (``set_params``, ``fit``). For a caller that reads them at once
        and keeps nothing, such as a process worker writing an update out, it spares a
        model-sized copy; adapters whose parameters live in numpy-viewable memory override it.
        """
        return self.get_params()

    @abc.abstractmethod
    def set_params(self, params: Params) -> None:
        """Load parameters, e.g. the global model received from the server."""

    @abc.abstractmethod
    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        """Train locally; returns training metrics (at least ``loss``)."""

    @abc.abstractmethod
    def evaluate(self, data: Dataset) -> dict[str, float]:
        """Metrics on ``data``: ``loss`` and, for classifiers, ``accuracy``."""

    def begin_round(self, seed: int) -> None:
        """Start one local round: forget local optimiser state and reseed local randomness.

        Clients call it before each ``fit`` with :func:`task_seed`, so a round's result depends
        only on (job seed, client, round) and the global model: not on what this adapter trained
        before. That makes runs reproducible and lets a simulation reuse one adapter for many
        virtual clients. Adapters without local state or randomness need not override it.
        """


def task_seed(job_seed: int, client_id: str, round: int) -> int:
    """The seed of one client's local round, the same in real runs and simulations.

    A keyed hash of the triple: well mixed, stable across processes and Python versions, and
    about 30x cheaper than a numpy SeedSequence (it runs once per client per round).
    """
    digest = hashlib.blake2b(f"{job_seed}/{client_id}/{round}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


ModelFactory = Callable[..., ModelAdapter]
#: factories take ``spec: DataSpec`` and ``seed: int`` first, then their own parameters
models: Registry[ModelAdapter] = Registry("model")


def build_model(name: str, spec: DataSpec, seed: int = 0, **params: object) -> ModelAdapter:
    """Build a registered model for data described by ``spec``."""
    return models.create(name, spec=spec, seed=seed, **params)


def classification_metrics(
    proba: np.ndarray, y: np.ndarray, classes: np.ndarray
) -> dict[str, float]:
    """Cross-entropy and accuracy of class probabilities ``proba`` (columns in ``classes`` order).

    Labels outside ``classes`` count as wrong with the largest possible clipped loss, rather than
    raising, so one odd row in a client's data cannot abort a round.
    """
    if len(y) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    known = classes[idx] == y
    p = np.clip(proba[np.arange(len(y)), idx], 1e-15, 1.0)
    p[~known] = 1e-15
    predicted = classes[np.argmax(proba, axis=1)]
    return {"loss": float(-np.mean(np.log(p))), "accuracy": float(np.mean(predicted == y))}


def hold_out(data: Dataset, fraction: float,
             rng: np.random.Generator) -> tuple[Dataset, Dataset]:
    """``(train, validation)``: a random ``fraction`` of the rows held out for validation.
    When that would leave fewer than two training rows, or no validation rows, the
    validation set is the training set (scores are then optimistic training scores)."""
    order = rng.permutation(len(data))
    n_val = int(len(data) * fraction)
    if n_val and len(data) - n_val < 2:
        n_val = 0
    train, val = data.subset(order[n_val:]), data.subset(order[:n_val])
    return train, (val if len(val) else train)


def ensemble_metrics(prediction: np.ndarray, y: np.ndarray, task: str,
                     classes: np.ndarray) -> dict[str, float]:
    """Metrics of an ensemble's ``(n, k)`` output: class probabilities for classification
    (columns in ``classes`` order), one prediction per row (``k = 1``) for regression."""
    if task == "classification":
        return classification_metrics(prediction, np.asarray(y), classes)
    return regression_metrics(prediction[:, 0], y)


def regression_metrics(prediction: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean squared error (as ``loss``) and the coefficient of determination ``r2``."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    mse = float(np.mean((prediction - y) ** 2)) if len(y) else float("nan")
    var = float(np.var(y)) if len(y) else 0.0
    r2 = 1.0 - mse / var if var > 0 else float("nan")
    return {"loss": mse, "r2": r2}
