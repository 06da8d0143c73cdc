"""The bare script ``bench/cold_start.py`` times beside ``foedus run``: one round of the same
federation written by hand, importing only what it needs (numpy and torch, or numpy and
scikit-learn's linear models), so the difference is what foedus adds to a cold start.

Usage: ``python bench/cold_start_bare.py torch|sklearn``. Prints ``round 1 accuracy A`` when
the first round's averaged model has been evaluated, then exits.
"""

from __future__ import annotations

import gzip
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np

CLIENTS = 10


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits read with numpy, pixels in [0, 1], a seeded 80/20 split."""
    found = find_spec("sklearn")
    assert found is not None and found.submodule_search_locations is not None
    path = Path(next(iter(found.submodule_search_locations))) / "datasets/data/digits.csv.gz"
    with gzip.open(path, "rb") as stream:
        table = np.loadtxt(stream, delimiter=",")
    x, y = (table[:, :-1] / 16.0).astype(np.float32), table[:, -1].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def torch_round(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    import torch

    torch.manual_seed(1)

    def mlp() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                   torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 10))

    server = mlp()
    states = []
    for part_x, part_y in zip(np.array_split(x, CLIENTS), np.array_split(y, CLIENTS),
                              strict=True):
        model = mlp()
        model.load_state_dict(server.state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tx, ty = torch.from_numpy(part_x), torch.from_numpy(part_y)
        for _ in range(2):
            for start in range(0, len(ty), 32):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(tx[start:start + 32]),
                                                         ty[start:start + 32])
                loss.backward()
                optimizer.step()
        states.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    server.load_state_dict({k: torch.from_numpy(np.mean([s[k] for s in states], axis=0))
                            for k in states[0]})
    with torch.no_grad():
        return float((server(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())


def sklearn_round(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> float:
    from sklearn.linear_model import SGDClassifier

    classes = np.arange(10)
    coefs, intercepts = [], []
    for part_x, part_y in zip(np.array_split(x, CLIENTS), np.array_split(y, CLIENTS),
                              strict=True):
        model = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0)
        model.partial_fit(part_x, part_y, classes=classes)
        coefs.append(model.coef_)
        intercepts.append(model.intercept_)
    model.coef_, model.intercept_ = np.mean(coefs, axis=0), np.mean(intercepts, axis=0)
    return float((model.predict(xt) == yt).mean())


def main() -> None:
    framework = sys.argv[1]
    data = digits()
    accuracy = torch_round(*data) if framework == "torch" else sklearn_round(*data)
    print(f"round 1 accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
