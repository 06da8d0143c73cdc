"""FedAvg (McMahan et al., 2017): the sample-weighted mean of client models.

Streaming: a running weighted sum in one float64 vector, so memory is O(model) however many
clients report, and each update costs one fused multiply-add over the vector.
"""

from __future__ import annotations

import numpy as np

from foedus.aggregate.base import Aggregator, aggregators


@aggregators.register("fedavg")
class FedAvg(Aggregator):
    """Weighted mean of client parameters, weights = number of local training examples."""

    streaming = True

    def _reset(self) -> None:
        self._sum = np.zeros_like(self.global_vector)
        self._weight = 0.0

    def _accept_vector(self, vector: np.ndarray, weight: int) -> None:
        # in place: no temporary of model size per update beyond the flattened input
        np.multiply(vector, float(weight), out=vector)
        self._sum += vector
        self._weight += weight

    def _result_vector(self) -> np.ndarray:
        return self._sum / self._weight
