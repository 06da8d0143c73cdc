"""MLflow tracking and registry against a real ``mlflow server`` on loopback."""

from __future__ import annotations

import asyncio
import socket
import uuid

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.mlops.mlflow import (
    MlflowTracker,
    TrackingError,
    job_params,
    load_model_version,
    round_metrics,
)
from foedus.roles.server import RoundRecord
from foedus.runner import run_job
from tests.mlops.conftest import build_job, run_graphs_of


def _client(url: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_job_params_flatten_nested_sections_with_dotted_keys() -> None:
    spec = JobSpec.from_dict({"job_id": "j", "clients": {"count": 4}, "rounds": 2})
    flat = job_params(spec)
    assert flat["job_id"] == "j"
    assert flat["clients.count"] == "4"
    assert flat["rounds"] == "2"
    assert flat["aggregator.type"] == "fedavg"


def test_round_metrics_name_server_client_and_rejection_numbers() -> None:
    record = RoundRecord(3, accepted=4, rejected={"stale_round": 2}, failed_clients=["c9"],
                         metrics={"accuracy": 0.9}, client_metrics={"train_loss": 0.3})
    values = round_metrics(record)
    assert values["server_accuracy"] == 0.9
    assert values["clients_train_loss"] == 0.3
    assert values["updates_rejected"] == 2
    assert values["updates_rejected_stale_round"] == 2
    assert values["clients_failed"] == 1


def test_tracker_refuses_a_missing_tracking_uri() -> None:
    with pytest.raises(ConfigError, match="tracking_uri"):
        MlflowTracker(tracking_uri="", job_id="j")


@pytest.mark.integration
async def test_tracker_pod_logs_a_run_per_job_with_rounds_bytes_and_registered_model(
    mlflow_server: str,
) -> None:
    job = build_job(_unique("mlflow-pod"), rounds=3)
    model_name = _unique("foedus-model")
    tracker = MlflowTracker(
        tracking_uri=mlflow_server, job_id=job.server.job_id, experiment=_unique("exp"),
        params={"rounds": 3, "clients": {"count": 3}}, registered_model=model_name,
        checkpoint_every=2, model_source=lambda: job.server.params,
    )
    job.server_graph.add(tracker).connect("server.events", "mlflow.events")
    await run_graphs_of(job)
    registered = tracker.finish(lineage={"foedus.trigger": "initial"})

    client = _client(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["clients.count"] == "3"
    assert run.data.tags["foedus.job_id"] == job.server.job_id
    history = client.get_metric_history(tracker.run_id, "server_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == [r.metrics["accuracy"] for r in job.server.history]
    sent = client.get_metric_history(tracker.run_id, "bytes_out")
    assert sent[-1].value > 0  # the server's model broadcasts, read from its own uplink
    artifacts = {f.path for f in client.list_artifacts(tracker.run_id, "models")}
    assert artifacts == {"models/round-0002", "models/final"}

    assert registered is not None and registered.name == model_name
    version = client.get_model_version(model_name, registered.version)
    assert version.run_id == tracker.run_id
    assert version.tags["foedus.job_id"] == job.server.job_id
    assert version.tags["foedus.trigger"] == "initial"
    assert version.tags["foedus.rounds"] == "3"
    loaded = load_model_version(mlflow_server, model_name, registered.version)
    assert set(loaded) == set(job.server.params)
    for name, array in job.server.params.items():
        np.testing.assert_array_equal(loaded[name], array)


@pytest.mark.integration
async def test_tracker_as_run_job_listener_registers_successive_versions(
    mlflow_server: str,
) -> None:
    model_name = _unique("foedus-listener")
    versions = []
    for seed in (0, 1):
        spec = JobSpec.from_dict({
            "job_id": _unique("listener"), "rounds": 2, "seed": seed,
            "data": {"dataset": "iris"}, "clients": {"count": 2},
        })
        tracker = MlflowTracker(tracking_uri=mlflow_server, job_id=spec.job_id, params=spec,
                                registered_model=model_name)
        result = await run_job(spec, on_round=tracker.listener())
        versions.append(tracker.finish(result.params))
    assert [v.version for v in versions if v is not None] == ["1", "2"]
    client = _client(mlflow_server)
    second = client.get_model_version(model_name, "2")
    assert second.tags["foedus.spec_sha256"] != client.get_model_version(
        model_name, "1").tags["foedus.spec_sha256"]
    metrics = client.get_metric_history(second.run_id, "clients_train_loss")
    assert [m.step for m in metrics] == [1, 2]


def _refusing_url() -> tuple[str, socket.socket]:
    """An http URL on loopback whose port refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{sock.getsockname()[1]}", sock


def test_check_names_an_unreachable_tracking_server_in_one_line() -> None:
    url, sock = _refusing_url()
    with sock:
        tracker = MlflowTracker(tracking_uri=url, job_id="j")
        with pytest.raises(TrackingError, match=rf"^mlops.mlflow.tracking_uri: cannot reach the "
                                                rf"MLflow server at {url} \(ConnectionRefused"):
            tracker.check()
    assert tracker.unusable
    assert tracker.finish(status="FAILED") is None  # no run to end, and no retries to wait out


def test_check_names_a_tracking_uri_mlflow_refuses() -> None:
    tracker = MlflowTracker(tracking_uri="nosuch://x", job_id="j")
    with pytest.raises(TrackingError, match=r"^mlops.mlflow.tracking_uri: MLflow refuses "
                                            r"'nosuch://x': Unsupported"):
        tracker.check()


async def test_a_tracking_server_gone_mid_job_costs_seconds_and_ends_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server answered the check before round 1, then went away: each round's logging
    waited out MLflow's retries (246 s a call measured) on the tracker's thread, and the job's
    end waited for all of them, then for finish's own calls. Now a round the server cannot
    take is skipped with a WARNING, and finish fails at once, in one line."""
    url, sock = _refusing_url()
    with sock:
        tracker = MlflowTracker(tracking_uri=url, job_id="gone")
        tracker.listener()  # as attach() does once check() passed
        began = asyncio.get_running_loop().time()
        tracker.log_round(RoundRecord(round=1, status="ok", accepted=2))
        with pytest.raises(TrackingError, match=rf"^mlops.mlflow: cannot finish the run: the "
                                                rf"tracking server at {url} does not answer"):
            await asyncio.wait_for(asyncio.to_thread(tracker.finish), 15)
        assert asyncio.get_running_loop().time() - began < 5
    assert any("round 1 not logged" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")


async def test_a_job_whose_tracking_server_is_down_fails_before_round_1() -> None:
    """It used to train every round, then wait out MLflow's retries (minutes) when the job
    ended, and end in a traceback; now nothing trains and the error is one line."""
    url, sock = _refusing_url()
    rounds: list[RoundRecord] = []
    with sock:
        spec = JobSpec.from_dict({"job_id": "down", "rounds": 2, "clients": {"count": 2},
                                  "mlops": {"mlflow": {"tracking_uri": url}}})
        with pytest.raises(TrackingError, match="cannot reach the MLflow server"):
            await asyncio.wait_for(run_job(spec, on_round=rounds.append), 60)
    assert rounds == []
