"""FedAvg's fused fold, compiled with numba (extra ``fast``).

Why a compiled kernel: numpy folds a group of updates into a block with two calls per update
(``tmp = w * x`` then ``block += tmp``), so besides reading each update from memory once it
makes four passes over the cache-resident block per update, and on a server whose cores share
one memory system those passes are what keeps FedAvg from the memory's speed. The kernel below
reads several updates (FedAvg passes up to ``KERNEL_STREAMS``) and the running sum once, element
by element, and writes each result once: the fewest memory passes a streaming weighted mean can
make. It also reports whether
everything it wrote is finite, which is how FedAvg notices a NaN or Inf without another pass.

The kernel is compiled on first use for each group size (cached on disk by numba, so a later
process loads it instead of compiling) and releases the GIL, so FedAvg's threads run it in
parallel. Without numba, FedAvg folds with numpy (same results up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from foedus.core.errors import require

#: ``fold(out, base, coefs, updates, scale, lo, hi) -> bool``: writes
#: ``out[i] = (base[i] + sum_j coefs[j] * updates[j][i]) * scale`` for ``lo <= i < hi`` and
#: returns whether every value written is finite. ``base`` is ``None`` when there is no running
#: sum yet. Scaling last, as numpy's fold does, makes the mean the same whether the sum was
#: scaled in the same pass or after it (a refused update must leave no trace, bit for bit).
FoldKernel = Callable[..., bool]


@cache
def available() -> bool:
    """Whether numba is installed (FedAvg's ``kernel="auto"`` then uses :func:`fold_kernel`)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


# The loops run from 0 to the length of ``out``: with an index that may be negative (a loop from
# ``lo`` to ``hi``), numba wraps negative indices around, and that keeps LLVM from vectorising
# the loop (measured 2-4x slower), so the caller passes views of the block instead.


def _fold_onto(out: Any, base: Any, coefs: Any, updates: Any, scale: Any) -> bool:
    broken = 0
    for i in range(out.shape[0]):
        value = base[i]
        for j in range(len(updates)):
            value += coefs[j] * updates[j][i]
        value *= scale
        out[i] = value
        broken |= (value - value) != 0  # NaN only for NaN and Inf: an integer OR vectorises
    return broken == 0


def _fold_into(out: Any, coefs: Any, updates: Any, scale: Any) -> bool:
    # _fold_onto with base = out, written separately: passing one array as both would make
    # LLVM's runtime overlap check fail and run the loop unvectorised
    broken = 0
    for i in range(out.shape[0]):
        value = out[i]
        for j in range(len(updates)):
            value += coefs[j] * updates[j][i]
        value *= scale
        out[i] = value
        broken |= (value - value) != 0
    return broken == 0


def _fold_fresh(out: Any, coefs: Any, updates: Any, scale: Any) -> bool:
    broken = 0
    for i in range(out.shape[0]):
        value = coefs[0] * updates[0][i]
        for j in range(1, len(updates)):
            value += coefs[j] * updates[j][i]
        value *= scale
        out[i] = value
        broken |= (value - value) != 0
    return broken == 0


def compile_kernels(*functions: Callable[..., Any]) -> list[Callable[..., Any]]:
    """``functions`` compiled by numba (extra ``fast``) with strict IEEE arithmetic (no
    fast-math) and the GIL released, cached on disk where numba finds a writable cache
    directory and compiled in memory otherwise."""
    numba = require("numba", "fast")
    try:
        return [numba.njit(nogil=True, cache=True)(f) for f in functions]
    except RuntimeError:  # numba found no writable cache directory
        return [numba.njit(nogil=True)(f) for f in functions]


@cache
def fold_kernel() -> FoldKernel:
    """The compiled fold (compiled once per process and argument types)."""
    fold_onto, fold_into, fold_fresh = compile_kernels(_fold_onto, _fold_into, _fold_fresh)

    def fold(out: Any, base: Any, coefs: Any, updates: tuple[Any, ...], scale: float,
             lo: int, hi: int) -> bool:
        factor = out.dtype.type(scale)  # float32 arithmetic stays float32
        block = out[lo:hi]
        xs = tuple(x[lo:hi] for x in updates)
        if base is None:
            return bool(fold_fresh(block, coefs, xs, factor))
        if base is out:
            return bool(fold_into(block, coefs, xs, factor))
        return bool(fold_onto(block, base[lo:hi], coefs, xs, factor))

    return fold
