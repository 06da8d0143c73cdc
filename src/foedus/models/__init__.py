"""Model adapters: PyTorch, scikit-learn (and more) as named numpy arrays."""

from foedus.models import sklearn as _sklearn  # noqa: F401  (registers "sklearn-sgd")
from foedus.models import torch as _torch  # noqa: F401  (registers "torch-mlp"; imports torch lazily)
from foedus.models.base import ModelAdapter, build_model, models

__all__ = ["ModelAdapter", "build_model", "models"]
