"""The torch adapter's default optimiser: SGD with momentum, without ``torch.optim``.

Why not ``torch.optim.SGD``: constructing any ``torch.optim.Optimizer`` imports
``torch._dynamo`` (its ``__init__`` is wrapped by torch's lazy dynamo-disable decorator), about
0.8 s of a small job's start-up, for a compiler foedus never uses. This class performs exactly
the arithmetic of ``torch.optim.SGD(params, lr, momentum)`` with its CPU defaults (no
dampening, weight decay or Nesterov; the per-tensor loop), in the same order, so it gives the
same bits (tested against it). A caller who wants any other optimiser passes ``optimizer=``
to :class:`~foedus.models.torch.TorchAdapter`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class MomentumSGD:
    """``buf = momentum * buf + grad`` (``buf = grad`` on the first step), ``p -= lr * buf``.

    ``state`` maps a parameter to its momentum buffer; clearing it (a new round) restarts the
    momentum, as clearing ``torch.optim.Optimizer.state`` does.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9) -> None:
        from foedus.core.errors import require

        self._torch: Any = require("torch", "torch")
        self.params = [p for p in params if p.requires_grad]
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.state: dict[Any, Any] = {}

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``, torch's default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        with self._torch.no_grad():
            for p in self.params:
                grad = p.grad
                if grad is None:
                    continue
                if self.momentum:
                    buf = self.state.get(p)
                    if buf is None:
                        buf = self.state[p] = grad.detach().clone()
                    else:
                        buf.mul_(self.momentum).add_(grad)
                    grad = buf
                p.add_(grad, alpha=-self.lr)
