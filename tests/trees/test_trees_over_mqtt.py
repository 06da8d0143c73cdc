"""Tree models travel over a real broker like any other model: each tree path as a whole job
(server and 10 clients in this process, every actor with its own connection) over Mosquitto."""

from __future__ import annotations

from typing import Any

import pytest

from foedus.config.spec import JobSpec
from foedus.runner import run_job_sync
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name


@pytest.mark.integration
@pytest.mark.parametrize(("dataset", "model", "aggregator", "rounds", "floor"), [
    ("digits", {"type": "federated-forest", "params": {"n_estimators": 10}},
     "forest-histograms", 16, ("accuracy", 0.85)),
    # regression: float64 statistics, zstd-coded updates, broadcasts without histograms
    ("diabetes", {"type": "federated-forest", "params": {"n_estimators": 10}},
     "forest-histograms", 30, ("r2", 0.15)),  # 0.19 here (10 trees)
    ("breast_cancer", {"type": "sklearn-random-forest", "params": {"n_estimators": 5}},
     "tree-bagging", 1, ("accuracy", 0.85)),
    ("breast_cancer", {"type": "xgboost-bagging", "params": {"num_boost_round": 10}},
     "tree-bagging", 1, ("accuracy", 0.85)),
])
def test_a_tree_job_over_mosquitto_accepts_every_client_and_learns(
    mosquitto: Mosquitto, dataset: str, model: dict[str, Any], aggregator: str, rounds: int,
    floor: tuple[str, float],
) -> None:
    if model["type"] == "xgboost-bagging":
        pytest.importorskip("xgboost")
    regression = dataset == "diabetes"
    result = run_job_sync(JobSpec.from_dict({
        "job_id": f"trees-mqtt-{model['type']}-{dataset}", "seed": 0, "rounds": rounds,
        "round_timeout": 60, "data": {"dataset": dataset, "partition": "iid"},
        "clients": {"count": 10}, "model": model, "aggregator": aggregator,
        "pipeline": [{"type": "zstd"}] if regression else [],
        "transport": {"type": "mqtt",
                      "params": {"host": "127.0.0.1", "port": mosquitto.plain_port}},
    }))
    assert all(r.status == "ok" and r.accepted == 10 for r in result.history)
    metric, least = floor
    assert result.final_metrics[metric] >= least
    if regression:
        assert result.final_metrics["open_nodes"] == 0  # the forest finished growing
