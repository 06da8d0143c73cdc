"""Byzantine-robust aggregators: Krum, Multi-Krum, Median, Trimmed-Mean, GeoMedian, Bulyan.

Each needs every update of the round at once (``streaming = False``): they compare clients
with one another. Updates are stacked as the rows of one ``(n, d)`` matrix as they arrive, each
stored as its *offset from the global model* (``x_i - global``). Every rule here is
translation-equivariant, so the result is the same as on raw models, but offsets are small
numbers of similar size, which keeps the Gram-matrix distances below accurate.

Vectorisation:

* pairwise squared distances come from one Gram matrix ``G = X X^T`` (a BLAS matrix product):
  ``|x_i - x_j|^2 = G_ii + G_jj - 2 G_ij``; Krum, Multi-Krum and Bulyan's selection then work on
  the small ``(n, n)`` matrix only;
* GeoMedian runs Weiszfeld's iterations in the n-dimensional space of coefficients ``c``
  (``z = X^T c``), with distances ``|x_i - z|^2 = (e_i - c)^T G (e_i - c)``, so the ``(n, d)``
  matrix is read twice (Gram and final combination) however many iterations run;
* Median and Trimmed-Mean sort cache-sized column blocks, transposed so each coordinate's
  values are contiguous (numpy's SIMD sort; see :func:`sorted_columns`);
* Bulyan's coordinate-wise phase walks the columns in cache-sized blocks to bound its
  temporaries (arg-partition indices are 8 bytes a value).

These rules deliberately ignore the reported example counts (a Byzantine client can lie about
them), except GeoMedian, which follows RFA and weights by example count unless
``weighted: false``, and Multi-Krum with ``weighted: true`` (Flower's definition).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from foedus.aggregate.base import Aggregator, aggregators, positive_number, whole_number
from foedus.aggregate.base import fraction as _fraction
from foedus.core.errors import ConfigError
from foedus.core.params import Params, flatten

_INITIAL_ROWS = 8


class StackedAggregator(Aggregator):
    """Collects the round's updates as rows of an ``(n, d)`` matrix, then aggregates them."""

    streaming: ClassVar[bool] = False

    def clear_round(self) -> None:
        # The matrix is kept from round to round when the model is unchanged: every round
        # needs it again, and refilling memory already mapped avoids the page faults of a
        # fresh allocation (a large share of the round for big models).
        matrix: np.ndarray | None = getattr(self, "_matrix", None)
        if matrix is not None and (matrix.shape[1] != self.spec.size
                                   or matrix.dtype != self.work_dtype):
            matrix = None
        self._matrix = matrix
        self._weights: list[float] = []
        self._origin = flatten(self._global_params or {}, self.work_dtype)

    def _row(self) -> np.ndarray:
        """The next free row, growing the matrix by doubling. Rows never written are never
        touched, so the operating system does not back the spare capacity with memory.

        Growth reallocates in place (``ndarray.resize``: the C library moves a large block's
        pages instead of copying them), so the old and the new matrix never coexist: a copy
        into a fresh matrix would peak at 1.5x the new size. No view of the matrix outlives a
        call (rows are written and dropped within :meth:`fold_params`; the rules' results
        are new arrays), which is what makes the unchecked resize safe.
        """
        n, d = len(self._weights), self.spec.size
        if self._matrix is None:
            self._matrix = np.empty((_INITIAL_ROWS, d), dtype=self.work_dtype)
        elif n == self._matrix.shape[0]:
            self._matrix.resize((2 * n, d), refcheck=False)
        row: np.ndarray = self._matrix[n]
        return row

    def fold_params(self, params: Params, weight: int) -> None:
        row = self._row()
        offset = 0
        for array in params.values():
            n = array.size
            np.subtract(array.reshape(-1), self._origin[offset : offset + n],
                        out=row[offset : offset + n], casting="same_kind")
            offset += n
        self._weights.append(float(weight))

    def fold_vector(self, vector: np.ndarray, weight: int) -> None:
        np.subtract(vector, self._origin, out=self._row(), casting="same_kind")
        self._weights.append(float(weight))

    def result_vector(self) -> np.ndarray:
        assert self._matrix is not None
        n = len(self._weights)
        combined = self.aggregate(self._matrix[:n], np.asarray(self._weights))
        return np.asarray(self.global_vector + combined)

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The rule itself, on the ``(n, d)`` offsets from the global model; returns ``(d,)``.

        May reorder values within a column (partitioning) but not mix rows.
        """
        raise NotImplementedError


def pairwise_sq_distances(x: np.ndarray) -> np.ndarray:
    """``(n, n)`` squared Euclidean distances between the rows of ``x`` via ``G = x x^T``.

    The product runs in the matrix's own dtype (BLAS); the small result is taken to float64.
    """
    gram = (x @ x.T).astype(np.float64)
    return _distances_from_gram(gram)


def _distances_from_gram(gram: np.ndarray) -> np.ndarray:
    norms = np.diag(gram)
    dist = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)  # rounding can make tiny distances slightly negative
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each row: the sum of squared distances to its ``n - f - 2`` nearest
    other rows (Blanchard et al., 2017).

    Bulyan's last selection rounds run on fewer than ``2f + 3`` candidates; there at least the
    nearest neighbour counts.
    """
    n = dist.shape[0]
    if n == 1:
        return np.zeros(1)
    k = max(n - f - 2, 1)
    others = dist + np.diag(np.full(n, np.inf))  # a row is not its own neighbour
    nearest = np.partition(others, k - 1, axis=1)[:, :k]
    return np.asarray(nearest.sum(axis=1))


def krum_ranking(dist: np.ndarray, f: int) -> np.ndarray:
    """Row indices from best to worst Krum score.

    Ties (two mutual nearest neighbours always tie when only one neighbour counts) are broken
    by the sum of squared distances to all rows, then by index, so the choice depends on the
    updates' contents rather than on the order in which they arrived.
    """
    return np.lexsort((np.arange(dist.shape[0]), dist.sum(axis=1), krum_scores(dist, f)))


def _byzantine(f: object) -> int:
    return whole_number("f", f, minimum=0)


@aggregators.register("krum")
class Krum(StackedAggregator):
    """Krum: the single update with the smallest sum of squared distances to its
    ``n - f - 2`` nearest neighbours. Tolerates ``f`` Byzantine clients when ``n > 2f + 2``."""

    def __init__(self, f: int = 1) -> None:
        super().__init__()
        self.f = _byzantine(f)

    def describe(self) -> str:
        return f"{type(self).__name__}(f={self.f}) (n > 2f + 2)"

    def min_updates(self) -> int:
        return 2 * self.f + 3

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        best = int(krum_ranking(pairwise_sq_distances(offsets), self.f)[0])
        return np.array(offsets[best], dtype=np.float64)


@aggregators.register("multi-krum")
class MultiKrum(Krum):
    """Multi-Krum: the mean of the ``m`` updates with the best Krum scores.

    ``m`` defaults to ``n - f``; it may not exceed ``n - f`` (more would certainly include an
    attacker when all ``f`` attack). The mean is plain by default: a Byzantine client can claim
    any example count, and among the chosen updates a large claim would buy it influence the
    selection just denied it. ``weighted: true`` weights the chosen updates by their example
    counts instead, as Flower's ``aggregate_krum`` does (for clients whose counts are trusted,
    e.g. bounded by ``clients.max_examples``).
    """

    def __init__(self, f: int = 1, m: int | None = None, weighted: bool = False) -> None:
        super().__init__(f)
        self.m = None if m is None else whole_number("m", m, minimum=1)
        if not isinstance(weighted, bool):
            raise ConfigError(f"weighted: expected true or false, got {weighted!r}")
        self.weighted = weighted

    def describe(self) -> str:
        weighting = ", weighted" if self.weighted else ""
        return f"MultiKrum(f={self.f}, m={self.m}{weighting}) (n > 2f + 2)"

    def min_updates(self) -> int:
        return max(2 * self.f + 3, (self.m or 0) + self.f)

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n = offsets.shape[0]
        m = self.m if self.m is not None else n - self.f
        chosen = krum_ranking(pairwise_sq_distances(offsets), self.f)[:m]
        coefficients = np.zeros(n, dtype=offsets.dtype)
        if self.weighted:
            coefficients[chosen] = weights[chosen] / weights[chosen].sum()
        else:
            coefficients[chosen] = 1.0 / m
        return np.asarray(coefficients @ offsets, dtype=np.float64)


@aggregators.register("median")
class Median(StackedAggregator):
    """Coordinate-wise median (Yin et al., 2018): for an even count, the mean of the middle two."""

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return coordinate_median(offsets)


def coordinate_median(x: np.ndarray) -> np.ndarray:
    """Median of each column of ``x`` (the mean of the middle two for an even count)."""
    n = x.shape[0]
    mid = n // 2
    if n % 2:
        return sorted_columns(x, lambda s: s[:, mid])
    return sorted_columns(x, lambda s: (s[:, mid - 1] + s[:, mid].astype(np.float64)) * 0.5)


# Bytes of one column block in sorted_columns: it, transposed, stays in the L2 cache.
_SORT_BLOCK_BYTES = 1 << 19


def sorted_columns(x: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce`` applied to every column of ``x`` sorted, as a float64 vector.

    Why not ``np.partition``/``np.median`` along the client axis: numpy selects in each column
    separately, a small strided sort per coordinate, so the per-column overhead dominates
    (that is what Flower does). Here columns are taken in cache-sized blocks, transposed into
    one contiguous ``(block, n)`` buffer in the matrix's own dtype, and sorted along its rows,
    where numpy uses its SIMD sorting networks: several times faster for the client counts
    federated learning sees. ``reduce`` gets the sorted ``(block, n)`` buffer and returns one
    value per row.
    """
    n, d = x.shape
    width = max(64, _SORT_BLOCK_BYTES // max(1, n * x.itemsize))
    buf = np.empty((min(width, d), n), dtype=x.dtype)
    out = np.empty(d, dtype=np.float64)
    for start in range(0, d, width):
        stop = min(start + width, d)
        block = buf[: stop - start]
        block[...] = x[:, start:stop].T
        block.sort(axis=1)
        out[start:stop] = reduce(block)
    return out


@aggregators.register("trimmed-mean")
class TrimmedMean(StackedAggregator):
    """Coordinate-wise trimmed mean (Yin et al., 2018): in every coordinate drop the
    ``floor(beta * n)`` largest and smallest values, average the rest. ``beta`` in [0, 0.5)."""

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = _fraction("beta", beta, low=0.0, high=0.5)

    def describe(self) -> str:
        return f"TrimmedMean(beta={self.beta})"

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n = offsets.shape[0]
        k = int(np.floor(self.beta * n))
        if k == 0:
            return np.asarray(offsets.mean(axis=0, dtype=np.float64))
        return sorted_columns(
            offsets, lambda s: s[:, k : n - k].sum(axis=1, dtype=np.float64) / (n - 2 * k))


@aggregators.register("geomedian")
class GeoMedian(StackedAggregator):
    """Geometric median by the smoothed Weiszfeld algorithm of RFA (Pillutla et al., 2022).

    Minimises ``sum_i a_i * max(nu, |z - x_i|)`` with ``a_i`` the example-count weights
    (or equal weights with ``weighted: false``). Stops after ``max_iter`` iterations or when
    the objective improves by less than ``ftol`` (relative). The paper finds a few iterations
    enough. The result is a convex combination of the updates; its breakdown point is 1/2.
    """

    def __init__(
        self, nu: float = 1e-6, max_iter: int = 100, ftol: float = 1e-7, weighted: bool = True
    ) -> None:
        super().__init__()
        self.nu = positive_number("nu", nu)
        self.max_iter = whole_number("max_iter", max_iter, minimum=1)
        self.ftol = positive_number("ftol", ftol)
        if not isinstance(weighted, bool):
            raise ConfigError(f"weighted: expected true or false, got {weighted!r}")
        self.weighted = weighted
        self.iterations = 0  # used by the last result(), for diagnostics

    def describe(self) -> str:
        return f"GeoMedian(nu={self.nu}, max_iter={self.max_iter}, ftol={self.ftol})"

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        gram = (offsets @ offsets.T).astype(np.float64)
        n = len(weights)
        alpha = weights / weights.sum() if self.weighted else np.full(n, 1.0 / n)
        coefficients, self.iterations = weiszfeld(gram, alpha, self.nu, self.max_iter, self.ftol)
        return np.asarray(coefficients.astype(offsets.dtype) @ offsets, dtype=np.float64)


def weiszfeld(
    gram: np.ndarray, alpha: np.ndarray, nu: float, max_iter: int, ftol: float
) -> tuple[np.ndarray, int]:
    """Smoothed Weiszfeld iterations on coefficients ``c`` of ``z = X^T c``, given ``G = XX^T``.

    Returns the final coefficients and the number of iterations run.
    """
    diag = np.diag(gram)

    def distances(c: np.ndarray) -> np.ndarray:
        gc = gram @ c
        sq = diag - 2.0 * gc + c @ gc
        return np.asarray(np.sqrt(np.maximum(sq, 0.0)))

    c = alpha.copy()
    objective = float(alpha @ np.maximum(distances(c), nu))
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - iterations is reported
        beta = alpha / np.maximum(distances(c), nu)
        c = beta / beta.sum()
        new_objective = float(alpha @ np.maximum(distances(c), nu))
        converged = abs(objective - new_objective) <= ftol * max(new_objective, 1e-300)
        objective = new_objective
        if converged:
            break
    # Near a data point, smoothed Weiszfeld creeps (its step shrinks with the distance), so a
    # capped run can stop short of a minimiser that is one of the updates. Those n candidates
    # cost nothing to score from the Gram matrix: keep the best of them if it beats the run.
    point_objectives = np.sqrt(_distances_from_gram(gram)).clip(min=nu) @ alpha
    best = int(np.argmin(point_objectives))
    if point_objectives[best] < objective:
        c = np.zeros_like(c)
        c[best] = 1.0
    return c, iterations


@aggregators.register("bulyan")
class Bulyan(StackedAggregator):
    """Bulyan (El Mhamdi et al., 2018) over Krum, for ``n >= 4f + 3`` updates.

    1. Select ``theta = n - 2f`` updates by running Krum repeatedly, each time removing the
       chosen update from the candidates.
    2. In every coordinate, average the ``beta = theta - 2f`` selected values closest to the
       selected values' median.
    """

    block: ClassVar[int] = 1 << 16

    def __init__(self, f: int = 1) -> None:
        super().__init__()
        self.f = _byzantine(f)

    def describe(self) -> str:
        return f"Bulyan(f={self.f}) (n >= 4f + 3)"

    def min_updates(self) -> int:
        return 4 * self.f + 3

    def aggregate(self, offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n, d = offsets.shape
        theta = n - 2 * self.f
        beta = theta - 2 * self.f
        selected = bulyan_selection(pairwise_sq_distances(offsets), self.f, theta)
        rows = np.sort(selected)
        out = np.empty(d, dtype=np.float64)
        for start in range(0, d, self.block):
            stop = min(start + self.block, d)
            block = offsets[rows, start:stop]  # (theta, block): a small copy
            median = np.median(block, axis=0)
            gap = np.abs(block - median)
            nearest = np.argpartition(gap, beta - 1, axis=0)[:beta]
            values = np.take_along_axis(block, nearest, axis=0)
            out[start:stop] = values.mean(axis=0, dtype=np.float64)
        return out


def bulyan_selection(dist: np.ndarray, f: int, theta: int) -> np.ndarray:
    """Indices of the ``theta`` updates Bulyan keeps: Krum applied repeatedly, removing each
    winner from the candidate set (scores recomputed on the remaining ones)."""
    remaining = list(range(dist.shape[0]))
    picked: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(remaining, remaining)]
        picked.append(remaining.pop(int(krum_ranking(sub, f)[0])))
    return np.asarray(picked)


__all__ = [
    "Bulyan", "GeoMedian", "Krum", "Median", "MultiKrum", "StackedAggregator", "TrimmedMean",
]
