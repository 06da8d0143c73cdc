"""PyTorch adapter: the whole state dict travels (BatchNorm buffers too); FedProx is an option."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.models.base import build_model
from foedus.models.torch import TorchAdapter
from foedus.runner import run_job

Loaded = tuple[Dataset, Dataset, DataSpec]


@pytest.fixture(scope="module")
def digits() -> Loaded:
    return load_dataset("digits")


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(sum(np.sum((a[k].astype(float) - b[k]) ** 2) for k in a if "weight" in k))


def test_the_state_dict_with_batchnorm_buffers_round_trips(digits: Loaded) -> None:
    train, test, spec = digits
    trained = build_model("torch-mlp", spec, batch_norm=True)
    trained.fit(train)
    params = trained.get_params()
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(params)
    assert params["1.running_mean"].any()  # statistics were learned, not left at zero
    fresh = build_model("torch-mlp", spec, seed=9, batch_norm=True)
    fresh.set_params(params)
    assert fresh.evaluate(test) == pytest.approx(trained.evaluate(test))
    for name, value in fresh.get_params().items():
        np.testing.assert_array_equal(value, params[name])


def test_a_state_dict_with_missing_buffers_is_refused(digits: Loaded) -> None:
    spec = digits[2]
    params = build_model("torch-mlp", spec, batch_norm=True).get_params()
    del params["1.running_var"]
    with pytest.raises(ConfigError, match="running_var"):
        build_model("torch-mlp", spec, batch_norm=True).set_params(params)


def test_fedprox_keeps_local_training_close_to_the_global_model(digits: Loaded) -> None:
    train, _, spec = digits
    start = build_model("torch-mlp", spec).get_params()
    moved = {}
    for mu in (0.0, 1.0):
        adapter = build_model("torch-mlp", spec, mu=mu)
        adapter.set_params(start)
        adapter.fit(train, epochs=2)
        moved[mu] = distance(adapter.get_params(), start)
    assert moved[1.0] < 0.5 * moved[0.0]


def test_the_proximal_term_is_zero_at_the_global_model_and_positive_away_from_it(
    digits: Loaded,
) -> None:
    spec = digits[2]
    adapter = build_model("torch-mlp", spec, mu=0.5)
    assert isinstance(adapter, TorchAdapter)
    adapter.set_params(adapter.get_params())
    assert float(adapter.proximal_term().detach()) == 0.0
    with adapter.torch.no_grad():
        next(adapter.module.parameters()).add_(1.0)
    assert float(adapter.proximal_term().detach()) > 0.0


def test_a_negative_mu_is_a_configuration_error(digits: Loaded) -> None:
    with pytest.raises(ConfigError, match="mu"):
        build_model("torch-mlp", digits[2], mu=-1.0)


async def test_federated_torch_mlp_with_batchnorm_and_fedprox_learns_digits() -> None:
    spec = JobSpec.from_dict({
        "job_id": "torch-prox", "rounds": 3, "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 4, "epochs": 2},
        "model": {"type": "torch-mlp", "params": {"batch_norm": True, "mu": 0.01}},
    })
    result = await run_job(spec)
    assert result.final_metrics["accuracy"] > 0.85  # chance is 0.1
    assert result.params["1.running_mean"].any()  # the global model carries averaged statistics
    assert int(result.params["1.num_batches_tracked"]) > 0
