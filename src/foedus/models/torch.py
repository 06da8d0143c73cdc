"""PyTorch adapter: any ``nn.Module``, parameters *and* buffers, by state-dict name.

Buffers matter: BatchNorm's running mean and variance are part of the model, and frameworks that
average only ``parameters()`` ship models whose normalisation statistics are wrong. This adapter
exchanges the whole ``state_dict``.

FedProx (Li et al., 2020) is an option: with ``mu > 0`` local training minimises
``loss + mu/2 * ||w - w_global||^2`` over the trainable parameters, where ``w_global`` is what the
last :meth:`TorchAdapter.set_params` loaded (the model the server broadcast). The term keeps
clients with skewed data from drifting far from the global model. It needs no change to the
client pod: the client always loads the global model before it trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from foedus.core.errors import ConfigError, require
from foedus.core.params import Params
from foedus.data.datasets import Dataset, DataSpec
from foedus.models.base import ModelAdapter, mlp_options, models
from foedus.models.torch_sgd import MomentumSGD

#: the extra this module's plugins need (`pip install foedus[torch]`), for `foedus plugins`
REQUIRES_EXTRA = "torch"

if TYPE_CHECKING:
    import torch as torch_t


class TorchAdapter(ModelAdapter):
    """Trains ``module`` with ``optimizer`` (default SGD with momentum 0.9: ``MomentumSGD``,
    the same bits as ``torch.optim.SGD``) on mini-batches."""

    def __init__(
        self, module: torch_t.nn.Module, *, loss_fn: Callable[..., Any] | None = None,
        optimizer: Callable[[Any], Any] | None = None, lr: float = 0.05,
        batch_size: int = 32, seed: int = 0, mu: float = 0.0,
    ) -> None:
        torch = require("torch", "torch")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if mu < 0:
            raise ConfigError(f"the FedProx mu must be non-negative, got {mu}")
        self.mu = mu
        self._anchor: list[tuple[Any, Any]] = []  # (parameter, its global value) for FedProx
        self.torch: Any = torch
        self.module = module
        self.loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
        # default: torch.optim.SGD's arithmetic without importing torch._dynamo (torch_sgd.py)
        make_opt = optimizer or (lambda p: MomentumSGD(p, lr=lr, momentum=0.9))
        self.optimizer: Any = make_opt(module.parameters())
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def begin_round(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.optimizer.state.clear()  # momentum from another round or client must not leak

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.module.state_dict().items()}

    def peek_params(self) -> Params:
        # on the CPU, a tensor's numpy() is a view of its storage
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    def set_params(self, params: Params) -> None:
        state = self.module.state_dict()
        unknown = sorted(set(params) - set(state))
        missing = sorted(set(state) - set(params))
        if unknown or missing:
            raise ConfigError(f"state dict mismatch: missing {missing}, unexpected {unknown}")
        for name, target in state.items():
            value = np.asarray(params[name])
            if tuple(value.shape) != tuple(target.shape):
                raise ConfigError(
                    f"{name!r} has shape {value.shape}, the model expects {tuple(target.shape)}"
                )
            # one copy, straight into the parameter's or buffer's own storage
            np.copyto(target.detach().cpu().numpy(), value, casting="same_kind")
        if self.mu > 0:
            self._anchor = [
                (p, p.detach().clone()) for p in self.module.parameters() if p.requires_grad
            ]

    def proximal_term(self) -> Any:
        """``mu/2 * ||w - w_global||^2`` (zero before any global model was loaded)."""
        if not self._anchor:
            return 0.0
        return 0.5 * self.mu * sum(((p - g) ** 2).sum() for p, g in self._anchor)

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        torch = self.torch
        x, y = torch.from_numpy(np.asarray(data.x)), torch.from_numpy(np.asarray(data.y))
        self.module.train()
        total, count = 0.0, 0
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=self.generator)
            for start in range(0, len(y), self.batch_size):
                batch = order[start : start + self.batch_size]
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.module(x[batch]), y[batch])
                total += loss.item() * len(batch)  # report the data loss, not the penalty
                if self._anchor:
                    loss = loss + self.proximal_term()
                loss.backward()
                self.optimizer.step()
                count += len(batch)
        return {"loss": total / max(count, 1)}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        torch = self.torch
        self.module.eval()
        with torch.no_grad():
            logits = self.module(torch.from_numpy(np.asarray(data.x)))
            y = torch.from_numpy(np.asarray(data.y))
            loss = float(self.loss_fn(logits, y))
            accuracy = float((logits.argmax(dim=1) == y).float().mean())
        return {"loss": loss, "accuracy": accuracy}


@models.register("torch-mlp")
def torch_mlp(
    spec: DataSpec, seed: int = 0, hidden: tuple[int, ...] | list[int] = (64, 32),
    lr: float = 0.1, batch_size: int = 32, batch_norm: bool = False, mu: float = 0.0,
) -> TorchAdapter:
    """A multi-layer perceptron for tabular or flattened image data (``mu > 0``: FedProx)."""
    hidden = mlp_options(hidden, lr, batch_size, mu)
    if spec.task != "classification":
        raise ConfigError(f"torch-mlp is a classifier; the dataset's task is {spec.task!r}")
    torch: Any = require("torch", "torch")
    # the CPU generator that initialises the layers: torch.manual_seed would seed it the same
    # way, but also queue a seed for CUDA, MPS and XPU, each with a formatted stack (~1.5 ms
    # a model, eleven models in a ten-client job, for devices these modules never use)
    torch.random.default_generator.manual_seed(seed)
    layers: list[Any] = []
    width = spec.n_features
    for h in hidden:
        layers.append(torch.nn.Linear(width, int(h)))
        if batch_norm:
            layers.append(torch.nn.BatchNorm1d(int(h)))
        layers.append(torch.nn.ReLU())
        width = int(h)
    layers.append(torch.nn.Linear(width, len(spec.classes)))
    return TorchAdapter(
        torch.nn.Sequential(*layers), lr=lr, batch_size=batch_size, seed=seed, mu=mu
    )
