"""Every adapter honours the round contract: a local round depends only on the global model,
the round's seed and the local data, so one adapter can train many simulated clients."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # must precede the first import of keras

import numpy as np
import pytest

import foedus.models.keras
import foedus.trees.bagging.sklearn_adapter  # noqa: F401  (both register their adapters)
from foedus.data.datasets import load_dataset
from foedus.models.base import build_model

CASES = [
    ("sklearn-sgd", "digits"), ("sklearn-logistic", "digits"), ("sklearn-mlp", "digits"),
    ("sklearn-sgd-regressor", "diabetes"), ("sklearn-ridge", "diabetes"),
    ("sklearn-mlp", "diabetes"), ("torch-mlp", "digits"), ("keras-mlp", "digits"),
    ("sklearn-random-forest", "digits"), ("sklearn-extra-trees", "diabetes"),
]
pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras"),
]


@pytest.mark.parametrize(("name", "dataset"), CASES)
def test_a_reused_adapter_trains_a_client_exactly_like_a_fresh_one(
    name: str, dataset: str
) -> None:
    train, _, spec = load_dataset(dataset)
    first, second = train.subset(np.arange(0, 120)), train.subset(np.arange(120, 240))
    start = build_model(name, spec, seed=0).get_params()

    fresh = build_model(name, spec, seed=0)
    fresh.set_params(start)
    fresh.begin_round(7)
    fresh.fit(second)

    reused = build_model(name, spec, seed=0)
    for seed, data in ((3, first), (7, second)):  # another client's round first
        reused.set_params(start)
        reused.begin_round(seed)
        reused.fit(data)

    expected = fresh.get_params()
    got = reused.get_params()
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
