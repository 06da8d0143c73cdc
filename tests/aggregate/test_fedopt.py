"""Server optimisers step on the round's mean offset and keep their state across rounds and
restarts (Reddi et al., 2021; Hsu et al., 2019)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.aggregate.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from foedus.core.errors import ConfigError
from foedus.roles.checkpoint import Checkpointer
from tests.aggregate.support import run_round


@pytest.fixture(params=["numpy", "numba"])
def kernel(request: pytest.FixtureRequest) -> str:
    """Each way to compute the step: numpy's passes, or the compiled kernel (extra fast)."""
    return str(request.param)


def one_round(agg: FedAvg, start: float, values: list[float], weights: list[int]) -> float:
    out = run_round(agg, {"w": np.array([start])}, [{"w": np.array([v])} for v in values],
                    weights)
    return float(out["w"][0])


def test_fedavgm_accumulates_momentum_across_rounds(kernel: str) -> None:
    agg = FedAvgM(server_lr=1.0, momentum=0.5, kernel=kernel)
    # round 1 from 0: mean of 0 (w=1) and 2 (w=3) is 1.5 -> v = 1.5, x = 1.5
    assert one_round(agg, 0.0, [0.0, 2.0], [1, 3]) == pytest.approx(1.5)
    # round 2 from 1.5: mean 3.5 -> delta 2 -> v = 0.5 * 1.5 + 2 = 2.75, x = 1.5 + 2.75
    assert one_round(agg, 1.5, [3.5, 3.5], [1, 1]) == pytest.approx(4.25)


def test_fedavgm_with_unit_rate_and_no_momentum_is_fedavg() -> None:
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=(4, 3)).astype(np.float32)}
    updates = [{"w": rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(5)]
    weights = [3, 1, 4, 1, 5]
    np.testing.assert_allclose(
        run_round(FedAvgM(server_lr=1.0, momentum=0.0), start, updates, weights)["w"],
        run_round(FedAvg(), start, updates, weights)["w"], rtol=1e-6)


def test_fedadam_takes_the_step_of_reddi_algorithm_2(kernel: str) -> None:
    agg = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.5, kernel=kernel)
    # delta = 2; m = 0.1 * 2 = 0.2; v = 0.99 * 0.25 + 0.01 * 4 = 0.2875
    x1 = 0.1 * 0.2 / (math.sqrt(0.2875) + 0.5)
    assert one_round(agg, 0.0, [2.0], [1]) == pytest.approx(x1)
    # second round from x1, clients at x1 + 1: delta = 1; m = 0.9 * 0.2 + 0.1 = 0.28;
    # v = 0.99 * 0.2875 + 0.01 * 1 = 0.294625
    x2 = x1 + 0.1 * 0.28 / (math.sqrt(0.294625) + 0.5)
    assert one_round(agg, x1, [x1 + 1.0], [1]) == pytest.approx(x2)


def test_fedyogi_moves_its_second_moment_additively(kernel: str) -> None:
    agg = FedYogi(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.5, kernel=kernel)
    # delta = 2: v = 0.25 - 0.01 * 4 * sign(0.25 - 4) = 0.29
    x1 = 0.1 * 0.2 / (math.sqrt(0.29) + 0.5)
    assert one_round(agg, 0.0, [2.0], [1]) == pytest.approx(x1)
    # delta = 0.1: v = 0.29 - 0.01 * 0.01 * sign(0.29 - 0.01) = 0.2899; m = 0.18 + 0.01 = 0.19
    x2 = x1 + 0.1 * 0.19 / (math.sqrt(0.2899) + 0.5)
    assert one_round(agg, x1, [x1 + 0.1], [1]) == pytest.approx(x2)


def test_fedadagrad_sums_squared_pseudo_gradients(kernel: str) -> None:
    agg = FedAdagrad(server_lr=0.1, beta1=0.0, tau=0.5, kernel=kernel)
    # delta = 2: m = 2, v = 0.25 + 4
    x1 = 0.1 * 2 / (math.sqrt(4.25) + 0.5)
    assert one_round(agg, 0.0, [2.0], [1]) == pytest.approx(x1)
    # delta = -1: m = -1, v = 4.25 + 1
    x2 = x1 - 0.1 / (math.sqrt(5.25) + 0.5)
    assert one_round(agg, x1, [x1 - 1.0], [1]) == pytest.approx(x2)


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_adaptive_optimisers_stay_put_when_clients_agree_with_the_global_model(
    cls: type[FedAdam],
) -> None:
    start = {"w": np.array([1.0, -2.0, 3.0])}
    out = run_round(cls(), start, [start] * 3, [1, 2, 3])
    np.testing.assert_allclose(out["w"], start["w"])


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_adaptive_steps_are_bounded_by_the_server_rate(cls: type[FedAdam]) -> None:
    # |m| / (sqrt(v) + tau) <= 1 for these optimisers in round one: a huge update cannot
    # move the model by more than server_lr per coordinate
    out = run_round(cls(server_lr=0.1), {"w": np.zeros(3)}, [{"w": np.array([1e6, -1e6, 5.0])}])
    assert np.abs(out["w"]).max() <= 0.1 + 1e-12


def _trajectory(agg: FedAvg, start: np.ndarray, rounds: range) -> np.ndarray:
    x = {"w": start}
    for r in rounds:
        target = np.sin(np.arange(start.size) + r)
        x = run_round(agg, x, [{"w": target}, {"w": target * 0.5}], [2, 1])
    return x["w"]


@pytest.mark.parametrize("make", [
    lambda: FedAvgM(server_lr=0.5, momentum=0.9), lambda: FedAdagrad(beta1=0.5),
    lambda: FedAdam(), lambda: FedYogi(),
])
def test_optimiser_state_survives_a_checkpoint_and_restart(make: object, tmp_path: Path) -> None:
    start = np.zeros(5)
    uninterrupted = make()  # type: ignore[operator]
    reference = _trajectory(uninterrupted, start, range(6))

    first = make()  # type: ignore[operator]
    halfway = _trajectory(first, start, range(3))
    ckpt = Checkpointer(tmp_path, "job")
    ckpt.save(3, {"w": halfway}, first.snapshot(), [])

    restarted = make()  # type: ignore[operator]
    loaded = ckpt.load()
    assert loaded is not None
    restarted.restore(loaded.aggregator_state)
    assert restarted.steps == 3
    resumed = _trajectory(restarted, loaded.params["w"], range(3, 6))
    np.testing.assert_allclose(resumed, reference, rtol=1e-12)


def test_a_fresh_optimiser_without_its_state_takes_a_different_path() -> None:
    # the state matters: dropping it changes the trajectory (so the test above means something)
    start = np.zeros(5)
    reference = _trajectory(FedAdam(), start, range(6))
    halfway = _trajectory(FedAdam(), start, range(3))
    assert not np.allclose(_trajectory(FedAdam(), halfway, range(3, 6)), reference)


def test_snapshot_is_a_copy_not_a_live_view() -> None:
    agg = FedAdam()
    _trajectory(agg, np.zeros(3), range(1))
    snap = agg.snapshot()
    m = snap["m"].copy()
    _trajectory(agg, np.zeros(3), range(1, 2))
    np.testing.assert_array_equal(snap["m"], m)


def test_state_from_another_model_is_refused_clearly() -> None:
    agg = FedAdam()
    agg.restore({"steps": 2, "m": np.zeros(10), "v": np.ones(10)})
    with pytest.raises(ConfigError, match="has 10 values but the model has 3"):
        agg.reset({"w": np.zeros(3)})


def test_state_from_another_aggregator_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="unexpected keys \\['momentum'\\]"):
        FedAdam().restore({"steps": 1, "momentum": np.zeros(3)})


@pytest.mark.parametrize(("factory", "message"), [
    (lambda: FedAdam(server_lr=0), "server_lr: expected a positive number, got 0"),
    (lambda: FedAdam(beta1=1.0), r"beta1: expected a number in \[0.0, 1.0\), got 1.0"),
    (lambda: FedYogi(beta2=-0.1), r"beta2: expected a number in \[0.0, 1.0\), got -0.1"),
    (lambda: FedAdagrad(tau=0), "tau: expected a positive number, got 0"),
    (lambda: FedAvgM(momentum=1.5), r"momentum: expected a number in \[0.0, 1.0\)"),
    (lambda: FedAvgM(server_lr="fast"), "server_lr: expected a positive number, got 'fast'"),
])
def test_invalid_settings_are_refused_naming_the_parameter(factory: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        factory()  # type: ignore[operator]


def test_fedadagrad_has_no_beta2() -> None:
    from foedus.aggregate.base import aggregators

    with pytest.raises(ConfigError, match="has no parameter 'beta2'"):
        aggregators.create("fedadagrad", beta2=0.9)


@pytest.mark.parametrize("make", [
    lambda kernel: FedAvgM(server_lr=0.5, momentum=0.9, kernel=kernel),
    lambda kernel: FedAdagrad(server_lr=0.1, tau=1e-3, kernel=kernel),
    lambda kernel: FedAdam(server_lr=0.1, tau=1e-3, kernel=kernel),
    lambda kernel: FedYogi(server_lr=0.1, tau=1e-3, kernel=kernel),
], ids=["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_the_compiled_step_gives_the_numpy_steps_bits_round_after_round(make: Any) -> None:
    rng = np.random.default_rng(4)
    model = {"w": rng.normal(size=(300, 7)).astype(np.float32),
             "b": rng.normal(size=7).astype(np.float32)}
    optimisers = {kernel: make(kernel) for kernel in ("numpy", "numba")}
    starts = dict.fromkeys(optimisers, model)
    for _ in range(4):
        offsets = [{k: (rng.normal(size=v.shape) * 0.1).astype(np.float32)
                    for k, v in model.items()} for _ in range(3)]
        for kernel, agg in optimisers.items():
            updates = [{k: starts[kernel][k] + off[k] for k in model} for off in offsets]
            starts[kernel] = run_round(agg, starts[kernel], updates, [2, 5, 3])
        for name in model:
            np.testing.assert_array_equal(starts["numba"][name], starts["numpy"][name])
    snapshots = [agg.snapshot() for agg in optimisers.values()]
    assert snapshots[0].keys() == snapshots[1].keys()
    for key in snapshots[0]:
        np.testing.assert_array_equal(snapshots[0][key], snapshots[1][key])
