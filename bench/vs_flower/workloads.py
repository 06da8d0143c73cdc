"""The benchmark's workloads, defined once for foedus, the bare loop and Flower.

This module is imported by three interpreters: foedus's venv (``foedus_run.py``, ``bare.py``,
``run.py``) and the Flower venv (``flower_run.py``), which has no foedus. So the module level
uses only the standard library; foedus, numpy and torch are imported inside the functions that
need them.

The same data for all three: :func:`write_data` asks foedus's own job builder
(:func:`foedus.config.parts.build_parts`, i.e. the digits loader and
:func:`foedus.data.partition.iid_partition` with the job's seed) for the clients' shares, the
test split and the initial model weights, and stores them in one ``.npz`` that the bare loop
and Flower load. foedus itself rebuilds the identical shares from the same job spec.

Model: a torch MLP, ``Linear(64, h1) - ReLU - ... - Linear(hk, 10)``, built exactly as foedus's
``torch-mlp`` builds it (``torch.manual_seed(seed)`` then the layers in order). The small
workloads use one hidden layer of 32 (64-32-10, 2,410 parameters); the large one uses two
hidden layers of 3,130 (64-3130-3130-10, 10,034,790 parameters, about 40 MB of float32).
Training, as in foedus's TorchAdapter: ``Workload.epochs`` epochs of SGD (one; five for the
100- and 1,000-client workloads, whose clients hold ~14 rows or fewer), lr ``Workload.lr``
(0.05), momentum 0.9, a fresh optimizer per client and round, mini-batches of 32 in an order
drawn from a torch generator seeded by (job seed, client id, round), cross-entropy loss;
aggregation: FedAvg weighted by the number of local examples; evaluation: accuracy of the
global model on the test split after every round.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SEED = 0
ROUNDS = 10
LR = 0.05
MOMENTUM = 0.9
BATCH_SIZE = 32
#: digits' training split repeated this many times for the 10,000-client workload, so each of
#: the 100 clients sampled per round holds as many rows (~14) as a client of the 100-client one
TILE = 100
TILED_DATASET = f"digits-x{TILE}"


@dataclass(frozen=True)
class Workload:
    """One row of the benchmark table."""

    name: str
    title: str
    clients: int
    hidden: tuple[int, ...] = (32,)
    per_round: int | None = None  # None: every client every round
    dataset: str = "digits"
    rounds: int = ROUNDS
    serialize: bool = False  # the bare loop also encodes/decodes every model and update
    #: local epochs and learning rate: clients with ~14 rows (or fewer) take one step an epoch,
    #: and one step a round at lr 0.05 leaves 10 rounds at chance; these make such rows learn
    epochs: int = 1
    lr: float = LR
    quick: bool = False  # part of ``run.py --quick``

    @property
    def sampled(self) -> int:
        return self.per_round or self.clients

    def job(self) -> dict[str, Any]:
        """The foedus job file (as a dict) for this workload."""
        clients: dict[str, Any] = {"count": self.clients, "epochs": self.epochs}
        if self.per_round is not None:
            clients["per_round"] = self.per_round
        return {
            "job_id": f"vs-flower-{self.name}",
            "seed": SEED,
            "rounds": self.rounds,
            "round_timeout": 3600.0,
            "data": {"dataset": self.dataset, "partition": "iid"},
            "clients": clients,
            "model": {"type": "torch-mlp", "params": {
                "hidden": list(self.hidden), "lr": self.lr, "batch_size": BATCH_SIZE}},
            "aggregator": "fedavg",
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("mlp-10", "64-32-10 MLP, 10 clients", 10, quick=True),
    # 5 local epochs: at 1 epoch (one step a round for ~14 rows or fewer) both ended at chance,
    # 0.0917; with 5, foedus's simulation reached 0.7944 (100) and 0.7917 (1,000) after 10 rounds
    Workload("mlp-100", "64-32-10 MLP, 100 clients, 5 local epochs", 100, quick=True,
             epochs=5),
    Workload("mlp-1000", "64-32-10 MLP, 1000 clients, 5 local epochs", 1000, epochs=5),
    Workload("mlp10m-10", "10M-parameter MLP, 10 clients", 10, hidden=(3130, 3130),
             serialize=True),
    Workload("sampled-10k", "64-32-10 MLP, 10,000 clients, 100 per round", 10_000,
             per_round=100, dataset=TILED_DATASET),
)}


def parameter_count(hidden: tuple[int, ...], features: int = 64, classes: int = 10) -> int:
    widths = [features, *hidden, classes]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def client_id(index: int) -> str:
    """foedus's name for client ``index`` (``foedus.config.runner.client_id``)."""
    return f"client-{index:03d}"


def client_seed(seed: int, index: int, rnd: int) -> int:
    """The seed of one client's local round: foedus's ``task_seed`` (foedus.models.base),
    restated here because Flower's venv has no foedus; :func:`write_data` checks they agree."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}/{client_id(index)}/{rnd}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


def sample_round(seed: int, rnd: int, clients: int, per_round: int | None) -> list[int]:
    """The clients of round ``rnd``: everyone, or foedus's seeded sample (same generator)."""
    import numpy as np

    if per_round is None:
        return list(range(clients))
    rng = np.random.default_rng([seed, rnd])
    return sorted(int(i) for i in rng.choice(clients, per_round, replace=False))


# ---- foedus side: data, registered lazily ------------------------------------------------------
def register_datasets() -> None:
    """Register the tiled digits set with foedus (idempotent; foedus venv only)."""
    from foedus.data.datasets import Dataset, DataSpec, datasets, load_dataset

    if TILED_DATASET in datasets:
        return

    def tiled(test_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset, DataSpec]:
        import numpy as np

        train, test, spec = load_dataset("digits", test_fraction=test_fraction, seed=seed)
        return Dataset(np.tile(train.x, (TILE, 1)), np.tile(train.y, TILE)), test, spec

    datasets.register(TILED_DATASET)(tiled)


def write_data(workload: Workload, path: Path) -> None:
    """Store the shares, test split and initial weights exactly as foedus builds them."""
    import numpy as np

    from foedus.config.parts import build_parts
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins

    load_plugins()
    register_datasets()
    _check_seeds()
    parts = build_parts(JobSpec.from_dict(workload.job()))
    sizes = np.array([len(s) for s in parts.shares], dtype=np.int64)
    initial = parts.initial_params()  # what the server starts from (JobParts has no .server)
    arrays: dict[str, Any] = {
        "x": np.concatenate([s.x for s in parts.shares]),
        "y": np.concatenate([s.y for s in parts.shares]),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]),
        "x_test": parts.test.x, "y_test": parts.test.y,
        "param_names": np.array(list(initial)),
        **{f"init/{k}": np.asarray(v) for k, v in initial.items()},
    }
    np.savez(path, **arrays)


def _check_seeds() -> None:
    """The bare loop and Flower must shuffle as foedus does, or accuracies cannot match."""
    from foedus.config.parts import client_id as foedus_client_id
    from foedus.models.base import task_seed

    for index, rnd in ((0, 1), (7, 3), (9999, 10)):
        if client_id(index) != foedus_client_id(index) or client_seed(
            SEED, index, rnd
        ) != task_seed(SEED, foedus_client_id(index), rnd):
            raise RuntimeError("workloads.client_seed no longer matches foedus's task_seed: "
                               "update bench/vs_flower/workloads.py")


# ---- the bare loop and Flower: read the data back ---------------------------------------------
class Data:
    """The clients' shares as slices of one array (cheap for 10,000 clients)."""

    def __init__(self, path: str | Path) -> None:
        import numpy as np

        with np.load(path) as z:
            self.x = z["x"]
            self.y = z["y"]
            self.offsets = z["offsets"]
            self.x_test = z["x_test"]
            self.y_test = z["y_test"]
            self.names = [str(n) for n in z["param_names"]]
            self.initial = {n: z[f"init/{n}"] for n in self.names}

    @property
    def clients(self) -> int:
        return len(self.offsets) - 1

    def share(self, index: int) -> tuple[Any, Any]:
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.x[a:b], self.y[a:b]


_CACHE: dict[str, Data] = {}


def cached_data(path: str) -> Data:
    """The data file, loaded once per process (each Ray actor is a long-lived process)."""
    if path not in _CACHE:
        _CACHE[path] = Data(path)
    return _CACHE[path]


def make_mlp(hidden: tuple[int, ...], features: int = 64, classes: int = 10) -> Any:
    """The same module foedus's torch-mlp builds (weights come from the data file)."""
    import torch

    layers: list[Any] = []
    width = features
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def train_one(model: Any, x: Any, y: Any, seed: int, *, lr: float = LR,
              epochs: int = 1) -> float:
    """One client's local round (``epochs`` epochs, one fresh optimizer, one generator seeded
    once, as foedus's TorchAdapter does); returns the mean training loss."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(yt), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[batch]), yt[batch])
            total += loss.item() * len(batch)
            count += len(batch)
            loss.backward()
            optimizer.step()
    return total / max(count, 1)


def accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        return float((logits.argmax(dim=1) == torch.from_numpy(y)).float().mean())
