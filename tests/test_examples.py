"""Every job file under examples/ runs as shipped and learns."""

from __future__ import annotations

from pathlib import Path

import pytest

from foedus.config.spec import load_job
from foedus.runner import run_job

# Keras's torch backend calls np.array on tensors the numpy 2 way it deprecates (not ours)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: the least final score each example must reach: accuracy (chance: 0.1 on digits, about
#: 0.4-0.6 on wine and breast_cancer) or, for regression, r2 (0 predicts the mean); set a little
#: below what the job reaches on this machine
FLOOR = {
    "digits-sklearn.yaml": ("accuracy", 0.90),
    "digits-torch.yaml": ("accuracy", 0.90),
    "digits-keras.yaml": ("accuracy", 0.90),
    "digits-federated-forest.yaml": ("accuracy", 0.93),
    "diabetes-federated-forest.yaml": ("r2", 0.2),
    "wine-iid.yaml": ("accuracy", 0.85),
    "breast-cancer-tree-bagging.yaml": ("accuracy", 0.90),
    "breast-cancer-xgboost.yaml": ("accuracy", 0.90),
    "breast-cancer-vertical.yaml": ("accuracy", 0.93),
}


def test_every_example_has_a_floor() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(FLOOR)


@pytest.mark.parametrize("name", sorted(FLOOR))
async def test_the_example_job_runs_as_shipped_and_learns(name: str) -> None:
    result = await run_job(load_job(EXAMPLES / name))
    assert all(record.status == "ok" for record in result.history)
    metric, floor = FLOOR[name]
    assert result.final_metrics[metric] >= floor
