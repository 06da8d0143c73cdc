"""Keras 3 adapter (torch backend): weights by name, BatchNorm statistics, FedProx, flat memory."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # must precede the first import of keras

import gc
from collections.abc import Iterator

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.data.datasets import Dataset, DataSpec, load_dataset
from foedus.models.base import build_model
from foedus.models.keras import KerasAdapter
from foedus.runner import run_job

keras = pytest.importorskip("keras")
Loaded = tuple[Dataset, Dataset, DataSpec]
# keras's torch backend calls np.array(tensor) internally, which numpy 2 flags as deprecated
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Keras on torch slows down 20x when its threads compete with other work on this 2-core
    machine (see docs/models.md); restore the setting for the rest of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Loaded:
    return load_dataset("digits")


def resident_mb() -> float:
    """This process's resident set size, from the kernel's own accounting."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_weights_round_trip_by_position_and_name_including_batchnorm_statistics(
    digits: Loaded,
) -> None:
    train, test, spec = digits
    trained = build_model("keras-mlp", spec, batch_norm=True)
    trained.fit(train)
    params = trained.get_params()
    assert any(name.endswith("moving_mean") for name in params)
    assert next(v for k, v in params.items() if k.endswith("moving_mean")).any()
    fresh = build_model("keras-mlp", spec, seed=5, batch_norm=True)  # other layer names, too
    fresh.set_params(params)
    assert fresh.evaluate(test) == pytest.approx(trained.evaluate(test), rel=1e-5)
    assert set(fresh.evaluate(test)) == {"loss", "accuracy"}


def test_weights_of_the_wrong_shape_are_refused(digits: Loaded) -> None:
    spec = digits[2]
    params = build_model("keras-mlp", spec, hidden=[16]).get_params()
    with pytest.raises(ConfigError, match="shape"):
        build_model("keras-mlp", spec, hidden=[32]).set_params(params)


def test_a_user_model_must_be_compiled() -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ConfigError, match="compile"):
        KerasAdapter(model)


def test_fedprox_keeps_local_training_close_to_the_global_model(digits: Loaded) -> None:
    train, _, spec = digits
    start = build_model("keras-mlp", spec).get_params()
    moved = {}
    for mu in (0.0, 1.0):
        adapter = build_model("keras-mlp", spec, mu=mu)
        adapter.set_params(start)
        adapter.fit(train.subset(np.arange(400)), epochs=2)
        after = adapter.get_params()
        moved[mu] = sum(float(np.sum((after[k] - start[k]) ** 2)) for k in start)
    assert moved[1.0] < 0.5 * moved[0.0]


def test_evaluation_loss_does_not_include_the_proximal_term(digits: Loaded) -> None:
    train, test, spec = digits
    plain, prox = build_model("keras-mlp", spec), build_model("keras-mlp", spec, mu=10.0)
    plain.fit(train.subset(np.arange(200)))
    prox.set_params(build_model("keras-mlp", spec, seed=3).get_params())  # the anchor
    assert isinstance(prox, KerasAdapter)
    for v, value in zip(prox.model.weights, plain.get_params().values(), strict=True):
        v.assign(value)  # same weights as `plain`, far from the anchor
    assert prox.evaluate(test)["loss"] == pytest.approx(plain.evaluate(test)["loss"], rel=1e-5)


def test_resident_memory_stays_flat_over_twenty_rounds(digits: Loaded) -> None:
    train, test, spec = digits
    adapter = build_model("keras-mlp", spec, batch_norm=True, mu=0.01)
    global_params = adapter.get_params()
    rss: dict[int, float] = {}
    for rnd in range(1, 21):
        adapter.set_params(global_params)
        adapter.fit(train.subset(np.arange(200)))
        adapter.evaluate(test.subset(np.arange(100)))
        global_params = adapter.get_params()
        if rnd in (5, 20):
            gc.collect()
            rss[rnd] = resident_mb()
    assert rss[20] - rss[5] < 40, f"RSS grew {rss[20] - rss[5]:.1f} MB from round 5 to 20"


async def test_federated_keras_mlp_with_fedprox_learns_digits() -> None:
    spec = JobSpec.from_dict({
        "job_id": "keras-prox", "rounds": 3, "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 4, "epochs": 1},
        "model": {"type": "keras-mlp", "params": {"mu": 0.01}},
    })
    result = await run_job(spec)
    assert result.final_metrics["accuracy"] > 0.85  # chance is 0.1
