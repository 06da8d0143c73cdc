"""Split learning's networks: each party's bottom model, the label party's top model, the
centralized twin, and the serving path.

Party ``k`` turns its columns of a batch of aligned rows into embeddings
``e_k = clip(bottom_k(X_k))`` (a small MLP; ``clip`` bounds each row's L2 norm when noise is
on); the label party combines them (``concat``: side by side in the parties' order; ``sum``:
added, which is what secure sum can compute without showing any one of them) and its top
model turns the combination into scores, one column per output as in
:mod:`foedus.vertical.linear` (a logit for binary, one per class, a value for regression).
The loss's gradient with respect to each ``e_k`` is all party ``k`` needs to train its bottom
model. Every module is seeded from the job's seed and its party's name, so every process
builds the same initial network; :func:`fit_centralized` trains exactly that network on the
joined columns, batch for batch: the twin split learning is compared with.

torch is imported inside the functions (the ``torch`` extra); modules cross this module's
boundary as ``Any``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, require
from foedus.core.params import Params
from foedus.vertical.linear import Task

#: how the label party combines the parties' embeddings
COMBINES = ("concat", "sum")


def _torch() -> Any:
    return require("torch", "torch")


@dataclass(frozen=True)
class SplitSpec:
    """The split network every party builds from the job file.

    ``hidden``: the bottom models' hidden layer widths; ``embedding``: the width of what each
    party sends; ``top_hidden``: the top model's hidden widths; ``combine``: one of
    :data:`COMBINES`; ``batch_size`` rows per step; ``learning_rate`` of every party's Adam.
    """

    hidden: tuple[int, ...] = (16,)
    embedding: int = 8
    top_hidden: tuple[int, ...] = (16,)
    combine: str = "concat"
    batch_size: int = 64
    learning_rate: float = 0.01

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise ConfigError(f"params.combine: got {self.combine!r}; allowed: "
                              f"{', '.join(COMBINES)}")

    def top_inputs(self, parties: int) -> int:
        """The top model's input width for ``parties`` embeddings."""
        return self.embedding * (parties if self.combine == "concat" else 1)


def seed_of(seed: int, name: str) -> int:
    """A module's seed: the job's seed and the module's name (a party, or ``top``)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def _mlp(inputs: int, hidden: Sequence[int], outputs: int, seed: int) -> Any:
    """An MLP whose initial weights depend on ``seed`` only: drawn from a generator of its
    own (PyTorch's default ranges, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), never from torch's
    global generator, which other threads (the other parties in this process) use too."""
    torch = _torch()
    generator = torch.Generator().manual_seed(seed)
    layers: list[Any] = []
    width = inputs
    for out in [*hidden, outputs]:
        layer = torch.nn.Linear(width, out)
        bound = 1.0 / math.sqrt(width)
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        layers += [layer, torch.nn.ReLU()]
        width = out
    return torch.nn.Sequential(*layers[:-1])  # no ReLU after the output layer


def bottom_model(columns: int, spec: SplitSpec, seed: int, party: str) -> Any:
    """Party ``party``'s bottom model: ``columns`` inputs, ``spec.embedding`` outputs."""
    return _mlp(columns, spec.hidden, spec.embedding, seed_of(seed, party))


def top_model(parties: int, task: Task, spec: SplitSpec, seed: int) -> Any:
    """The label party's top model: the combined embeddings in, the task's scores out."""
    return _mlp(spec.top_inputs(parties), spec.top_hidden, task.outputs, seed_of(seed, "top"))


def optimizer(module: Any, spec: SplitSpec) -> Any:
    """One party's optimizer (Adam is per parameter, so separate optimizers per party step
    exactly as one optimizer over the whole network would)."""
    return _torch().optim.Adam(module.parameters(), lr=spec.learning_rate)


def embed(module: Any, x: np.ndarray, clip: float | None) -> Any:
    """``bottom(x)`` as a float32 tensor, each row's L2 norm clipped to ``clip`` when given
    (inside the graph: the clipping is differentiated through)."""
    torch = _torch()
    e = module(torch.as_tensor(np.asarray(x, np.float32)))
    if clip is not None:
        norms = e.norm(dim=1, keepdim=True).clamp_min(1e-12)
        e = e * torch.clamp(clip / norms, max=1.0)
    return e


def combine(embeddings: Sequence[Any], how: str) -> Any:
    """The top model's input: embeddings side by side, or their sum."""
    torch = _torch()
    return torch.cat(list(embeddings), dim=1) if how == "concat" else sum(embeddings[1:],
                                                                           embeddings[0])


def loss(task: Task, scores: Any, y: np.ndarray) -> Any:
    """The batch's mean loss: binary cross-entropy on the logit, cross-entropy over the
    classes, or the squared error."""
    torch = _torch()
    target = torch.as_tensor(task.targets(y), dtype=torch.float32)
    if task.kind == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(scores, target)
    if task.kind == "multiclass":
        return torch.nn.functional.cross_entropy(scores, target)
    return torch.nn.functional.mse_loss(scores, target)


def batches(rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of epoch ``epoch``: a seeded shuffle of ``0 .. rows-1`` cut into
    ``batch_size`` pieces, positions in the training people sorted by id (the label party
    maps them to the aligned order, whose salt changes every run)."""
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    return [order[i:i + batch_size] for i in range(0, rows, batch_size)]


def state_of(module: Any, prefix: str) -> dict[str, np.ndarray]:
    """A module's weights as named arrays (how a job's result carries them)."""
    return {f"{prefix}/{k}": v.detach().cpu().numpy().copy()
            for k, v in module.state_dict().items()}


def load_state(module: Any, params: Params, prefix: str) -> Any:
    """``module`` with the weights :func:`state_of` gave under ``prefix``."""
    torch = _torch()
    start = f"{prefix}/"
    state = {k[len(start):]: torch.as_tensor(np.asarray(v)) for k, v in params.items()
             if k.startswith(start)}
    module.load_state_dict(state)
    return module


@dataclass
class SplitNet:
    """The whole network in one place: every party's bottom model and the top model."""

    spec: SplitSpec
    task: Task
    parties: list[str]  # the order of concatenation: the label party first
    bottoms: dict[str, Any]
    top: Any
    clip: float | None = None

    @classmethod
    def build(cls, spec: SplitSpec, task: Task, columns: Mapping[str, int], seed: int,
              clip: float | None = None) -> SplitNet:
        """The initial network every party builds for itself (``columns``: each party's
        column count, in concatenation order)."""
        return cls(spec, task, list(columns),
                   {p: bottom_model(c, spec, seed, p) for p, c in columns.items()},
                   top_model(len(columns), task, spec, seed), clip)

    def scores(self, xs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores ``(n, outputs)`` of rows whose columns ``xs[p]`` every party holds."""
        torch = _torch()
        with torch.no_grad():
            e = [embed(self.bottoms[p], xs[p], self.clip) for p in self.parties]
            return self.top(combine(e, self.spec.combine)).double().numpy()  # type: ignore[no-any-return]

    def params(self) -> dict[str, np.ndarray]:
        """Every module's weights: ``bottom/<party>/...`` and ``top/...``."""
        out = state_of(self.top, "top")
        for p, module in self.bottoms.items():
            out |= state_of(module, f"bottom/{p}")
        return out


def fit_centralized(blocks: Mapping[str, np.ndarray], y: np.ndarray, task: Task,
                    spec: SplitSpec, *, epochs: int, seed: int) -> SplitNet:
    """The same network trained on the joined columns in one process: ``blocks[p]`` is
    party ``p``'s columns of the aligned training rows (label party first), with the same
    initial weights, batches and optimizers as the split run."""
    net = SplitNet.build(spec, task, {p: b.shape[1] for p, b in blocks.items()}, seed)
    modules = [net.top, *net.bottoms.values()]
    optimizers = [optimizer(m, spec) for m in modules]
    for epoch in range(1, epochs + 1):
        for rows in batches(len(y), spec.batch_size, seed, epoch):
            for o in optimizers:
                o.zero_grad()
            e = [embed(net.bottoms[p], blocks[p][rows], None) for p in net.parties]
            loss(task, net.top(combine(e, spec.combine)), y[rows]).backward()
            for o in optimizers:
                o.step()
    return net


def predict(parts: Mapping[str, tuple[Sequence[str], np.ndarray]], net: SplitNet,
            ) -> tuple[list[str], np.ndarray]:
    """Predict for new entities, each party holding its own columns of them.

    ``parts`` maps each party to ``(ids, x)``: its rows of the new entities, in any order.
    Each party runs its bottom model on the ids it holds (its embeddings are all it would send
    over a network); the label party combines them and runs the top model. Only entities every
    party holds can be scored; the result is those ids, sorted, and their predicted labels or
    values.
    """
    missing = sorted(set(parts) ^ set(net.parties))
    if missing:
        raise ConfigError(f"predict: parties {missing} have data or a bottom model but not both")
    shared = sorted(set.intersection(*(set(ids) for ids, _ in parts.values())))
    xs = {}
    for name, (ids, x) in parts.items():
        row = {entity: i for i, entity in enumerate(ids)}
        xs[name] = np.asarray(x)[[row[e] for e in shared]]
    return shared, net.task.labels(net.scores(xs))
