"""FedAvg as the paper writes it, in plain numpy: the oracle for the fast one.

``new global = sum_k n_k w_k / sum_k n_k`` (McMahan et al., 2017), accumulated in float64 one
update at a time. It is deliberately not registered: :class:`~foedus.aggregate.fedavg.FedAvg`
computes the same mean much faster (grouped folds, float32 buffers, threads, a compiled kernel),
and its tests check it against this one. It is also the smallest complete aggregator, the one to
copy when writing your own (see ``docs/extending.md``).
"""

from __future__ import annotations

import numpy as np

from foedus.aggregate.base import Aggregator


class ReferenceFedAvg(Aggregator):
    """The example-weighted mean of the accepted updates, in float64, with no tricks."""

    def clear_round(self) -> None:
        """A new round: nothing summed yet."""
        self.total = np.zeros(self.spec.size, dtype=np.float64)
        self.examples = 0

    def fold_vector(self, vector: np.ndarray, weight: int) -> None:
        """Add one validated update, weighted by its number of examples."""
        self.total += weight * vector
        self.examples += weight

    def result_vector(self) -> np.ndarray:
        """The weighted mean; the base class cast it back to each parameter's dtype."""
        return self.total / self.examples
