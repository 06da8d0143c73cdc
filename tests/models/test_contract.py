"""Every adapter honours the round contract: a local round depends only on the global model,
the round's seed and the local data, so one adapter can train many simulated clients."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # must precede the first import of keras

import numpy as np
import pytest

import foedus.models.keras
import foedus.trees.bagging.sklearn_adapter  # noqa: F401  (both register their adapters)
from foedus.core.errors import ConfigError
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


NEURAL = ("torch-mlp", "keras-mlp")


@pytest.mark.parametrize("name", NEURAL)
@pytest.mark.parametrize(("options", "message"), [
    ({"hidden": "64"}, r"^hidden: expected a list of layer widths >= 1 such as \[64, 32\], "
                       r"got '64'$"),
    ({"hidden": [64, 0]}, r"^hidden: expected a list of layer widths"),
    ({"lr": -0.1}, r"^lr: expected a number >= 0, got -0.1$"),
    ({"lr": "0.01"}, r"^lr: expected a number >= 0, got '0.01'$"),
    ({"batch_size": "32"}, r"^batch_size: expected an integer >= 1, got '32'$"),
    ({"mu": "0.1"}, r"^mu: expected a number >= 0"),
])
def test_a_mistyped_or_out_of_range_option_is_one_configuration_error(
        name: str, options: dict[str, Any], message: str) -> None:
    """Before, hidden: "64" built layers of width 6 and 4 and a negative lr trained to chance
    (exit 0); a string batch_size failed with "'<' not supported between instances"."""
    with pytest.raises(ConfigError, match=message):
        build_model(name, load_dataset("digits")[2], **options)


@pytest.mark.parametrize("name", NEURAL)
def test_a_lone_width_is_one_hidden_layer(name: str) -> None:
    spec = load_dataset("digits")[2]
    one = build_model(name, spec, hidden=16).get_params()
    listed = build_model(name, spec, hidden=[16]).get_params()
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in listed.items()}
