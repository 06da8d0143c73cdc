"""Server optimisers: FedAvgM, FedAdagrad, FedAdam and FedYogi.

The round's weighted mean of client models is streamed exactly as in FedAvg (O(model) memory);
what changes is the step the server takes with it. The mean's offset from the current global
model, ``delta = mean - global``, is a pseudo-gradient (a descent direction), and the server
feeds it to an optimiser whose state lives across rounds:

* FedAvgM (Hsu et al., 2019): ``v = momentum * v + delta``; ``x += server_lr * v``.
* FedAdagrad, FedAdam, FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
  Algorithm 2): ``m = beta1 * m + (1 - beta1) * delta`` and

  - Adagrad: ``v = v + delta**2``
  - Adam:    ``v = beta2 * v + (1 - beta2) * delta**2``
  - Yogi:    ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``

  then ``x += server_lr * m / (sqrt(v) + tau)``. As in the paper there is no bias
  correction and ``v`` starts at ``tau**2``.

The optimiser state (``m``, ``v``, the step count) is part of :meth:`snapshot`, so a server
checkpoint carries it and a restarted server continues the same trajectory. State is kept in
float64 whatever the model's dtype: it is one vector or two per job, and the squared deltas
of a converging model underflow float32's useful range quickly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foedus.aggregate.base import aggregators, fraction, positive_number
from foedus.aggregate.fedavg import FedAvg, run_parts
from foedus.aggregate.step_kernels import ADAGRAD, ADAM, YOGI, compiled_steps
from foedus.core.errors import ConfigError
from foedus.core.params import unflatten

#: float64 values per block of the optimiser step: the block, its scratch and the state's
#: blocks stay in L2
STEP_BLOCK = 1 << 14


class ServerOptimizer(FedAvg):
    """FedAvg's streamed mean followed by an optimiser step on ``mean - global``."""

    streaming = True
    #: names of the optimiser state arrays a snapshot carries (subclasses declare theirs)
    state_keys: tuple[str, ...] = ()

    def __init__(self, kernel: str = "auto") -> None:
        super().__init__(kernel=kernel)
        self.steps = 0
        self._state: dict[str, np.ndarray] = {}

    def clear_round(self) -> None:
        super().clear_round()
        _ = self.global_vector  # take the float64 copy now, whatever the caller does later
        for key, array in self._state.items():
            if array.shape != (self.spec.size,):
                raise ConfigError(
                    f"{self.describe()}: optimiser state {key!r} has {array.size} values but the "
                    f"model has {self.spec.size}; the checkpoint belongs to another model"
                )

    def result_vector(self) -> np.ndarray:
        """``global + step(mean - global)``: compiled when FedAvg's fold is (one pass, each
        core a slice), else with numpy block by block (each of the step's several passes then
        runs over a cache-resident block instead of the whole model in memory)."""
        mean, start = self.mean_vector(), self.global_vector
        if self._fold_kernel is not None:
            # written in the model's float dtype: float32 tensors come out as views of it
            out = np.empty(self.spec.size, dtype=self.work_dtype)
            size, threads = self.spec.size, self.parallelism
            run_parts(lambda part: self.compiled_step(out, mean, start, part),
                      [slice(i * size // threads, (i + 1) * size // threads)
                       for i in range(threads)])
            self.steps += 1
            return out
        result = np.empty(self.spec.size, dtype=np.float64)
        delta_buffer = np.empty(min(STEP_BLOCK, self.spec.size), dtype=np.float64)
        scratch_buffer = np.empty_like(delta_buffer)
        for lo in range(0, self.spec.size, STEP_BLOCK):
            hi = min(lo + STEP_BLOCK, self.spec.size)
            delta, scratch = delta_buffer[: hi - lo], scratch_buffer[: hi - lo]
            np.subtract(mean[lo:hi], start[lo:hi], out=delta, dtype=np.float64)
            step = self.step(delta, scratch, slice(lo, hi))
            np.add(start[lo:hi], step, out=result[lo:hi])
        self.steps += 1
        return result

    def edge_result(self) -> dict[str, np.ndarray]:
        """The round's weighted mean, without a step: an edge's mean is averaged again by its
        parent, and only the root steps (with the job's one optimiser state), so a tree takes
        the same steps as a flat job."""
        self.close_round()
        return unflatten(self.mean_vector(), self.spec)

    def step(self, delta: np.ndarray, scratch: np.ndarray, part: slice) -> np.ndarray:
        """Update the optimiser state's ``part`` with ``delta`` (that part of the
        pseudo-gradient) and return the step to add; ``delta`` and ``scratch`` (same size) may
        be overwritten."""
        raise NotImplementedError

    def compiled_step(self, out: np.ndarray, mean: np.ndarray, start: np.ndarray,
                      part: slice) -> None:
        """Write ``global + step`` for ``part`` into ``out`` and update that part of the
        state, with a compiled kernel (:mod:`foedus.aggregate.step_kernels`)."""
        raise NotImplementedError

    def _buffer(self, key: str, fill: float) -> np.ndarray:
        if key not in self._state:
            self._state[key] = np.full(self.spec.size, fill, dtype=np.float64)
        return self._state[key]

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        state.update({key: array.copy() for key, array in self._state.items()})
        return state

    def restore(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - {"steps", *self.state_keys})
        if unknown:
            raise ConfigError(
                f"{self.describe()}: checkpoint state has unexpected keys {unknown}; "
                f"it was written by another aggregator"
            )
        self.steps = int(state.get("steps", 0))
        self._state = {
            key: np.array(state[key], dtype=np.float64).reshape(-1)
            for key in self.state_keys if key in state
        }


@aggregators.register("fedavgm")
class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al., 2019).

    ``server_lr=1, momentum=0`` is exactly FedAvg. The effective step is about
    ``server_lr / (1 - momentum)`` times the mean's offset, so lower ``server_lr`` when raising
    ``momentum``.
    """

    state_keys = ("momentum",)

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9,
                 kernel: str = "auto") -> None:
        super().__init__(kernel)
        self.server_lr = positive_number("server_lr", server_lr)
        self.momentum = fraction("momentum", momentum, low=0.0, high=1.0)

    def describe(self) -> str:
        return f"FedAvgM(server_lr={self.server_lr}, momentum={self.momentum})"

    def compiled_step(self, out: np.ndarray, mean: np.ndarray, start: np.ndarray,
                      part: slice) -> None:
        compiled_steps().momentum(out[part], mean[part], start[part],
                                  self._buffer("momentum", 0.0)[part], self.momentum,
                                  self.server_lr)

    def step(self, delta: np.ndarray, scratch: np.ndarray, part: slice) -> np.ndarray:
        velocity = self._buffer("momentum", 0.0)[part]
        velocity *= self.momentum
        velocity += delta
        np.multiply(velocity, self.server_lr, out=delta)
        return delta


class _Adaptive(ServerOptimizer):
    """The shared shape of Reddi et al.'s adaptive server optimisers."""

    state_keys = ("m", "v")

    def __init__(self, server_lr: float, beta1: float, beta2: float, tau: float,
                 kernel: str) -> None:
        super().__init__(kernel)
        self.server_lr = positive_number("server_lr", server_lr)
        self.beta1 = fraction("beta1", beta1, low=0.0, high=1.0)
        self.beta2 = fraction("beta2", beta2, low=0.0, high=1.0)
        self.tau = positive_number("tau", tau)

    def describe(self) -> str:
        return (f"{type(self).__name__}(server_lr={self.server_lr}, beta1={self.beta1}, "
                f"beta2={self.beta2}, tau={self.tau})")

    #: the second-moment rule, as :mod:`foedus.aggregate.step_kernels` numbers them
    _rule: int

    def compiled_step(self, out: np.ndarray, mean: np.ndarray, start: np.ndarray,
                      part: slice) -> None:
        compiled_steps().adaptive(out[part], mean[part], start[part],
                                  self._buffer("m", 0.0)[part],
                                  self._buffer("v", self.tau**2)[part],
                                  self.beta1, self.beta2, self.tau, self.server_lr, self._rule)

    def step(self, delta: np.ndarray, scratch: np.ndarray, part: slice) -> np.ndarray:
        m = self._buffer("m", 0.0)[part]
        v = self._buffer("v", self.tau**2)[part]
        m *= self.beta1
        np.multiply(delta, 1.0 - self.beta1, out=scratch)
        m += scratch
        np.square(delta, out=delta)  # delta is no longer needed as such: reuse it for delta**2
        self.second_moment(v, delta, scratch)
        np.sqrt(v, out=delta)
        delta += self.tau
        np.divide(m, delta, out=delta)
        delta *= self.server_lr
        return delta

    def second_moment(self, v: np.ndarray, squared: np.ndarray, scratch: np.ndarray) -> None:
        """Update ``v`` in place from ``squared`` (may overwrite ``scratch``, not
        ``squared``)."""
        raise NotImplementedError


@aggregators.register("fedadagrad")
class FedAdagrad(_Adaptive):
    """Adagrad on the server: ``v`` sums every round's squared pseudo-gradient."""

    _rule = ADAGRAD

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3,
                 kernel: str = "auto") -> None:
        super().__init__(server_lr, beta1, 0.0, tau, kernel)

    def describe(self) -> str:
        return f"FedAdagrad(server_lr={self.server_lr}, beta1={self.beta1}, tau={self.tau})"

    def second_moment(self, v: np.ndarray, squared: np.ndarray, scratch: np.ndarray) -> None:
        v += squared


@aggregators.register("fedadam")
class FedAdam(_Adaptive):
    """Adam on the server: exponential moving averages of the pseudo-gradient and its square."""

    _rule = ADAM

    def __init__(
        self, server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
        kernel: str = "auto",
    ) -> None:
        super().__init__(server_lr, beta1, beta2, tau, kernel)

    def second_moment(self, v: np.ndarray, squared: np.ndarray, scratch: np.ndarray) -> None:
        v *= self.beta2
        np.multiply(squared, 1.0 - self.beta2, out=scratch)
        v += scratch


@aggregators.register("fedyogi")
class FedYogi(_Adaptive):
    """Yogi on the server: ``v`` moves additively towards ``delta**2``, so it can grow or shrink
    by at most ``(1 - beta2) * delta**2`` a round (no sudden drop of the effective rate)."""

    _rule = YOGI

    def __init__(
        self, server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
        kernel: str = "auto",
    ) -> None:
        super().__init__(server_lr, beta1, beta2, tau, kernel)

    def second_moment(self, v: np.ndarray, squared: np.ndarray, scratch: np.ndarray) -> None:
        np.subtract(v, squared, out=scratch)
        np.sign(scratch, out=scratch)
        scratch *= squared
        scratch *= 1.0 - self.beta2
        v -= scratch
