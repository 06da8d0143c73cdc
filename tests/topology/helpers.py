"""Small shared pieces for the topology tests: one digits job, split among clients."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import foedus.models.sklearn  # noqa: F401  (registers the sklearn models)
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.data.partition import partition
from foedus.models.base import ModelAdapter, build_model


@dataclass
class Digits:
    shares: list[Dataset]
    test: Dataset
    spec: DataSpec
    kind: str = "sklearn-sgd"
    options: dict[str, Any] = field(default_factory=dict)

    def model(self) -> ModelAdapter:
        return build_model(self.kind, self.spec, seed=0, **self.options)

    def accuracy(self, params: Params) -> float:
        model = self.model()
        model.set_params(params)
        return model.evaluate(self.test)["accuracy"]


def digits(
    clients: int, *, scheme: str = "iid", seed: int = 0, kind: str = "sklearn-sgd", **options: Any
) -> Digits:
    train, test, spec = load_dataset("digits", test_fraction=0.2, seed=seed)
    return Digits(partition(train, clients, scheme=scheme, seed=seed), test, spec, kind, options)


def distance(a: Params, b: Params) -> float:
    """Euclidean distance between two models seen as one vector."""
    return float(np.sqrt(sum(np.sum((np.asarray(a[k]) - np.asarray(b[k])) ** 2) for k in a)))


def widen_executor(workers: int = 32) -> None:
    """Give the running loop more worker threads than simulated clients.

    Simulated clients sleep inside ``asyncio.to_thread`` (as real training occupies a thread),
    and asyncio's default pool has only ``cpu_count + 4`` threads: with more sleeping clients
    than that, the server's own ``to_thread`` calls would queue behind them. On real deployments
    every client is its own process, so the test gives the loop a pool as wide as the swarm.
    """
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers))
