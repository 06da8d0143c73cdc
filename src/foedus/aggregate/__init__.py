"""Aggregation strategies: how client updates become the next global model.

Importing this package registers every aggregator by name (``fedavg``, ``fedavgm``,
``fedadagrad``, ``fedadam``, ``fedyogi``, ``krum``, ``multi-krum``, ``median``,
``trimmed-mean``, ``geomedian``, ``bulyan``), so job files can name them.
"""

from foedus.aggregate.base import Aggregator, aggregators
from foedus.aggregate.fedavg import FedAvg
from foedus.aggregate.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi, ServerOptimizer
from foedus.aggregate.robust import (
    Bulyan,
    GeoMedian,
    Krum,
    Median,
    MultiKrum,
    StackedAggregator,
    TrimmedMean,
)

__all__ = [
    "Aggregator", "Bulyan", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedYogi", "GeoMedian",
    "Krum", "Median", "MultiKrum", "ServerOptimizer", "StackedAggregator", "TrimmedMean",
    "aggregators",
]
