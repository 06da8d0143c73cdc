"""The server optimisers' steps, compiled with numba (extra ``fast``).

Why: a server optimiser's step is several numpy passes per round (the offset from the global
model, the state updates, the square root, the division, the new model), each reading and
writing model-sized float64 arrays. Compiled, the step is one loop that reads the mean, the
global model and the state once and writes the state and the new model once. The arithmetic
is the numpy path's, operation for operation, in float64 with no fast-math, so both paths give
the same bits (tested). FedAvg's ``kernel`` setting chooses between them, as for its fold.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from foedus.aggregate.fold_kernel import compile_kernels

#: second-moment rules of the adaptive optimisers
ADAGRAD, ADAM, YOGI = 0, 1, 2


def _momentum(out: Any, mean: Any, start: Any, velocity: Any, momentum: float,
              lr: float) -> None:
    for i in range(out.shape[0]):
        delta = np.float64(mean[i]) - start[i]
        v = velocity[i] * momentum + delta
        velocity[i] = v
        out[i] = start[i] + v * lr


def _adaptive(out: Any, mean: Any, start: Any, m: Any, v: Any, beta1: float, beta2: float,
              tau: float, lr: float, rule: int) -> None:
    for i in range(out.shape[0]):
        delta = np.float64(mean[i]) - start[i]
        first = m[i] * beta1 + delta * (1.0 - beta1)
        m[i] = first
        squared = delta * delta
        second = v[i]
        if rule == ADAGRAD:
            second = second + squared
        elif rule == ADAM:
            second = second * beta2 + squared * (1.0 - beta2)
        else:  # Yogi
            second = second - np.sign(second - squared) * squared * (1.0 - beta2)
        v[i] = second
        out[i] = start[i] + first / (np.sqrt(second) + tau) * lr


class Steps(NamedTuple):
    momentum: Callable[..., None]
    adaptive: Callable[..., None]


@cache
def compiled_steps() -> Steps:
    """The compiled steps (compiled once per process and argument types; strict IEEE, so the
    bits match the numpy path)."""
    return Steps(*compile_kernels(_momentum, _adaptive))
