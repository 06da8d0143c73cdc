"""The model adapter contract: a local ML framework seen as named arrays.

An adapter wraps one party's model and speaks numpy to the rest of foedus: get and set named
parameter arrays, fit on local data, evaluate to metrics. Frameworks stay behind their extras and
are imported only when an adapter for them is built.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np

from foedus.core.params import Params
from foedus.core.registry import Registry
from foedus.data.datasets import Dataset, DataSpec


class ModelAdapter(abc.ABC):
    """One party's model. Implementations must not share state between instances."""

    @abc.abstractmethod
    def get_params(self) -> dict[str, np.ndarray]:
        """Current parameters by name (a copy the caller may keep)."""

    @abc.abstractmethod
    def set_params(self, params: Params) -> None:
        """Load parameters, e.g. the global model received from the server."""

    @abc.abstractmethod
    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        """Train locally; returns training metrics (at least ``loss``)."""

    @abc.abstractmethod
    def evaluate(self, data: Dataset) -> dict[str, float]:
        """Metrics on ``data``: ``loss`` and, for classifiers, ``accuracy``."""


ModelFactory = Callable[..., ModelAdapter]
#: factories take ``spec: DataSpec`` and ``seed: int`` first, then their own parameters
models: Registry[ModelAdapter] = Registry("model")


def build_model(name: str, spec: DataSpec, seed: int = 0, **params: object) -> ModelAdapter:
    """Build a registered model for data described by ``spec``."""
    return models.create(name, spec=spec, seed=seed, **params)
