"""The torch adapter's default optimiser is torch.optim.SGD's arithmetic, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.models.torch_sgd import MomentumSGD

torch = pytest.importorskip("torch")


def _train(make_optimizer: object, steps: int) -> list[np.ndarray]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    optimizer = make_optimizer(model.parameters())  # type: ignore[operator]
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    for step in range(steps):
        if step == steps // 2:
            optimizer.state.clear()  # a new round: the momentum starts again
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[step % 4::4]), y[step % 4::4]).backward()
        optimizer.step()
    return [p.detach().numpy().copy() for p in model.parameters()]


def test_momentum_sgd_gives_the_same_bits_as_torch_optim_sgd() -> None:
    ours = _train(lambda p: MomentumSGD(p, lr=0.1, momentum=0.9), steps=12)
    theirs = _train(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), steps=12)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_parameter_without_a_gradient_is_left_alone() -> None:
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = MomentumSGD([used, unused], lr=0.5)
    (used * torch.tensor([1.0, 2.0])).sum().backward()
    optimizer.step()
    assert used.tolist() == [0.5, 0.0]
    assert unused.tolist() == [1.0, 1.0]
    assert list(optimizer.state) == [used]
