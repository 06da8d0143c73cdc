"""Continual learning: drift on enough clients retrains and registers a new model version."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.mlops.continual import ContinualLearning
from foedus.mlops.drift import DriftMonitor
from foedus.mlops.mlflow import MlflowTracker
from foedus.runner import run_job
from foedus.testing import make_message

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # litestar, via evidently


def _batch(seed: int, shift: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(200, 3)) + shift


def test_the_loop_needs_at_least_one_client() -> None:
    with pytest.raises(ConfigError, match="min_clients"):
        ContinualLearning(make_spec=lambda g, c: JobSpec(), run_job=run_job, min_clients=0)


@pytest.mark.integration
async def test_drift_on_enough_clients_trains_a_new_job_and_registers_its_model(
    mlflow_server: str, tmp_path: Path,
) -> None:
    model_name = f"continual-{uuid.uuid4().hex[:8]}"
    specs: list[JobSpec] = []

    def make_spec(generation: int, drifted: list[str]) -> JobSpec:
        spec = JobSpec.from_dict({
            "job_id": f"{model_name}-gen{generation}", "rounds": 2, "seed": generation,
            "clients": {"count": 2}, "data": {"dataset": "wine"},
        })
        specs.append(spec)
        return spec

    loop = ContinualLearning(
        make_spec=make_spec, run_job=run_job, min_clients=2, parent_version="0",
        make_tracker=lambda spec: MlflowTracker(
            tracking_uri=mlflow_server, job_id=spec.job_id, params=spec,
            registered_model=model_name, experiment=model_name,
        ),
    )
    graph = Graph("drift-watch").add(loop)
    shifts = (0.0, 2.0, 0.0, 2.0)  # clients 1 and 3 drift
    for i in range(len(shifts)):
        monitor = DriftMonitor(job_id="prod", client_id=f"client-{i}", reference=_batch(i, 0.0),
                               report_dir=tmp_path, html=False, name=f"drift{i}")
        graph.add(monitor).connect(f"drift{i}.drift", "continual.drift")
        graph.expose(f"drift{i}.data")
    batches = [(i, _batch(10 + i, s)) for i, s in enumerate(shifts)]

    def data(rows: np.ndarray) -> Message:
        return make_message(Kind.METRICS, params={"x": rows})

    async with Runtime(graph) as runtime:
        for i, rows in batches[:2]:  # one drifted client so far: no retraining yet
            await runtime.inject(f"drift{i}", "data", data(rows))
        await runtime.drain()
        assert loop.history == [] and loop.drifted == {"client-1"}
        for i, rows in batches[2:]:
            await runtime.inject(f"drift{i}", "data", data(rows))
        await runtime.drain()
    assert runtime.stats.failures == []

    assert len(loop.history) == 1 and loop.drifted == set()
    done = loop.history[0]
    assert done.drifted_clients == ("client-1", "client-3")
    assert len(done.result.history) == 2 and [s.job_id for s in specs] == [done.job_id]
    assert done.model is not None
    from mlflow.tracking import MlflowClient

    version = MlflowClient(tracking_uri=mlflow_server).get_model_version(
        model_name, done.model.version)
    assert version.tags["foedus.trigger"] == "drift"
    assert version.tags["foedus.drifted_clients"] == "client-1,client-3"
    assert version.tags["foedus.parent_version"] == "0"
    assert version.tags["foedus.job_id"] == done.job_id
    assert loop.parent_version == done.model.version  # the next generation descends from it
