"""FedAvg (McMahan et al., 2017): the sample-weighted mean of client models.

Streaming: a running weighted sum in one vector of the model's own floating dtype, so memory is
O(model) however many clients report. Each update is folded in tensor by tensor straight into
its slice of the sum with one BLAS ``axpy`` (``sum += w * x``): one read of the update and one
read-modify-write of the sum, no flattened copy and no temporary.

NaN/Inf check: a rejected update must leave no trace, and a floating-point addition cannot be
undone exactly, so every tensor of an update is checked before any is added. The check is one
BLAS dot product of the tensor with itself (``x . x``), which reads the tensor at the machine's
full read bandwidth with no temporary: a NaN or Inf anywhere makes it non-finite. Only when it
is non-finite (a bad value, or finite values large enough to overflow the square) does the
exact element-wise test decide. The update is thus read twice (check, then add); the second
read often comes from cache. A fused single pass was tried: checking each cache-sized chunk just
before adding it cannot take back the chunks already added when a later one holds a NaN, and
writing into a second buffer (so the old sum survives) costs as much traffic as the second read.

Precision: a float32 model is summed in float32. The rounding error of the sum of K updates is
about sqrt(K) * 2**-24 relative (K * 2**-24 at worst), below float32's own resolution of the
result for the client counts federated learning sees; a float64 model is summed in float64.

FedProx (Li et al., 2020) aggregates exactly like FedAvg; its proximal term lives on the client
side, in the model adapters' training loop, so there is no separate server aggregator for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from foedus.aggregate.base import BLOCK, Aggregator, aggregators, check_finite_blocked
from foedus.core.params import Params


@aggregators.register("fedavg")
class FedAvg(Aggregator):
    """Weighted mean of client parameters, weights = number of local training examples."""

    streaming = True
    checks_finite = True

    def _reset(self) -> None:
        old: np.ndarray | None = getattr(self, "_sum", None)
        if old is not None and old.shape == (self.spec.size,) and old.dtype == self.work_dtype:
            old.fill(0)  # reuse last round's buffer: no fresh pages to fault in
        else:
            self._sum = np.zeros(self.spec.size, dtype=self.work_dtype)
        self._weight = 0.0
        self._axpy = _blas_axpy(self._sum.dtype)

    def _accept_params(self, params: Params, weight: int) -> None:
        for name, array in params.items():  # all of them before any is added
            check_finite_fast(name, array)
        offset = 0
        for array in params.values():
            n = array.size
            add_scaled(self._sum[offset : offset + n], array.reshape(-1), float(weight),
                       self._axpy)
            offset += n
        self._weight += weight

    def _accept_vector(self, vector: np.ndarray, weight: int) -> None:
        check_finite_fast("update", vector)
        add_scaled(self._sum, vector, float(weight), self._axpy)
        self._weight += weight

    def _result_vector(self) -> np.ndarray:
        return self.mean_vector()

    def mean_vector(self) -> np.ndarray:
        """The weighted mean of the updates accepted so far (in :attr:`work_dtype`)."""
        return np.asarray(self._sum / self._sum.dtype.type(self._weight))


Axpy = Callable[..., Any]


def check_finite_fast(name: str, array: np.ndarray) -> None:
    """Raise :class:`RejectedUpdate` if ``array`` holds a NaN or Inf.

    ``x . x`` (BLAS, multithreaded, no temporary) is finite for every finite ``x`` unless the
    squares overflow; only a non-finite dot product pays for the exact element-wise check.
    """
    if array.dtype.kind not in "fc":
        return
    flat = array.reshape(-1)
    if flat.dtype in (np.float32, np.float64) and flat.flags.c_contiguous:
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return
    check_finite_blocked({name: flat})


def _blas_axpy(dtype: np.dtype) -> Axpy | None:  # type: ignore[type-arg]
    """BLAS ``?axpy`` for ``dtype`` from SciPy (always present: scikit-learn needs it), or
    ``None`` to fall back to numpy."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return None
    if dtype == np.float32:
        return blas.saxpy  # type: ignore[no-any-return]
    if dtype == np.float64:
        return blas.daxpy  # type: ignore[no-any-return]
    return None


def add_scaled(out: np.ndarray, x: np.ndarray, weight: float, axpy: Axpy | None) -> None:
    """``out += weight * x`` in place, in one pass and without a model-sized temporary.

    ``out`` is a contiguous 1-D slice of an accumulator. BLAS axpy does it when the dtypes
    agree; otherwise numpy works through cache-sized blocks, so the ``weight * x`` temporary
    stays in cache.
    """
    if x.size == 0:
        return
    if axpy is not None and x.dtype == out.dtype and x.flags.c_contiguous:
        result = axpy(x, out, a=weight)
        if result is not out and not np.shares_memory(result, out):  # pragma: no cover
            out[...] = result
        return
    scratch = np.empty(min(BLOCK, x.size), dtype=out.dtype)
    for start in range(0, x.size, BLOCK):
        stop = min(start + BLOCK, x.size)
        tmp = scratch[: stop - start]
        np.multiply(x[start:stop], weight, out=tmp, casting="unsafe")
        out[start:stop] += tmp
