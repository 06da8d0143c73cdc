"""Model parameters as named numpy arrays, and the vector views aggregators work on.

Parameters are an ordered mapping ``name -> np.ndarray``. Aggregators want one flat vector per
update so their maths is a single vectorised numpy call; :func:`flatten` builds it with one copy
and :func:`unflatten` returns views into a vector, never copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from foedus.core.errors import RejectedUpdate

Params = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """Names, shapes and dtypes of a model's parameters: what every update must match."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]  # type: ignore[type-arg]

    @classmethod
    def of(cls, params: Params) -> ParamSpec:
        return cls(
            tuple(params),
            tuple(tuple(a.shape) for a in params.values()),
            tuple(a.dtype for a in params.values()),
        )

    @property
    def size(self) -> int:
        """Number of scalar values across all parameters."""
        return int(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes))

    def check(self, params: Params) -> None:
        """Raise :class:`RejectedUpdate` unless ``params`` has exactly these names and shapes."""
        if tuple(params) != self.names:
            missing = sorted(set(self.names) - set(params))
            extra = sorted(set(params) - set(self.names))
            raise RejectedUpdate(
                "wrong_names", f"missing {missing}, unexpected {extra}" if missing or extra
                else "parameters are in a different order"
            )
        for name, shape, array in zip(self.names, self.shapes, params.values(), strict=True):
            if tuple(array.shape) != shape:
                raise RejectedUpdate(
                    "wrong_shape", f"{name!r} has shape {tuple(array.shape)}, expected {shape}"
                )
        for name, dtype, array in zip(self.names, self.dtypes, params.values(), strict=True):
            if not np.can_cast(array.dtype, dtype, "same_kind"):  # e.g. complex into float
                raise RejectedUpdate("wrong_dtype", f"{name!r} is {array.dtype}, expected {dtype}")


def check_finite(params: Params) -> None:
    """Raise :class:`RejectedUpdate` if any floating-point value is NaN or infinite."""
    for name, array in params.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise RejectedUpdate("not_finite", f"{name!r} contains NaN or Inf")


def flatten(params: Params, dtype: np.dtype | type = np.float64,  # type: ignore[type-arg]
            out: np.ndarray | None = None) -> np.ndarray:
    """Concatenate all parameters into one contiguous 1-D vector of ``dtype``: one copy,
    cast on the way, into ``out`` when it is given (a vector of that size and dtype)."""
    arrays = [np.asarray(a) for a in params.values()]
    size = sum(a.size for a in arrays)
    if out is None:
        out = np.empty(size, dtype=dtype)
    elif out.shape != (size,) or out.dtype != np.dtype(dtype):
        raise ValueError(f"flatten: out has shape {out.shape} and dtype {out.dtype}, "
                         f"expected ({size},) and {np.dtype(dtype)}")
    offset = 0
    for a in arrays:
        out[offset:offset + a.size] = a.reshape(-1)
        offset += a.size
    return out


def unflatten(vector: np.ndarray, spec: ParamSpec) -> dict[str, np.ndarray]:
    """Split a flat vector back into named arrays, cast to each parameter's dtype.

    Arrays whose dtype equals the vector's are views into it; others are cast (one copy each).
    """
    if vector.shape != (spec.size,):
        raise ValueError(f"vector has shape {vector.shape}, expected ({spec.size},)")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes, strict=True):
        n = int(np.prod(shape, dtype=np.int64))
        piece = vector[offset : offset + n].reshape(shape)
        out[name] = piece if piece.dtype == dtype else piece.astype(dtype)
        offset += n
    return out


def nbytes(params: Params) -> int:
    """Total size in bytes of the arrays' data."""
    return int(sum(a.nbytes for a in params.values()))
