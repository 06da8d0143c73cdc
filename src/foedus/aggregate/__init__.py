"""Aggregation strategies: how client updates become the next global model."""

from foedus.aggregate.base import Aggregator, aggregators
from foedus.aggregate.fedavg import FedAvg

__all__ = ["Aggregator", "FedAvg", "aggregators"]
