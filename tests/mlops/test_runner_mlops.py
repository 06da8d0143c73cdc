"""The ``mlops:`` section of real jobs run by the runner, against real MLflow and Prometheus:
failed jobs register nothing, a resumed server continues its MLflow run, registered models load
with ``mlflow.pyfunc``, and Prometheus sees every round and every dashboard panel has data."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import PodError
from foedus.data.shares import load_job_data
from foedus.mlops.session import MlopsSession
from foedus.roles.server import RoundRecord
from foedus.runner import prepare, run_actors, run_job
from tests.conftest import free_port
from tests.mlops.test_dashboard import dashboard_panels

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _spec(job_id: str, mlops: dict[str, Any], **extra: Any) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": job_id, "rounds": 2, "data": {"dataset": "iris"}, "clients": {"count": 2},
        "mlops": mlops, **extra,
    })


def _client(url: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs(url: str, experiment: str) -> list[Any]:
    client = _client(url)
    found = client.get_experiment_by_name(experiment)
    return list(client.search_runs([found.experiment_id])) if found is not None else []


async def test_a_job_in_which_every_round_fails_registers_nothing_and_its_run_fails(
    mlflow_server: str,
) -> None:
    job_id = _unique("failed")
    spec = _spec(job_id, {"mlflow": {"tracking_uri": mlflow_server, "experiment": job_id,
                                     "registered_model": job_id}},
                 round_timeout=1e-6)  # a deadline no client meets: no round has quorum
    result = await run_job(spec)
    assert result.failure is not None and "mlflow_model_version" not in result.extra
    (run,) = _runs(mlflow_server, job_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in _client(mlflow_server).get_metric_history(
        run.info.run_id, "no_quorum")] == [1, 2]
    assert _client(mlflow_server).search_model_versions(f"name='{job_id}'") == []
    assert not _client(mlflow_server).list_artifacts(run.info.run_id, "models")


class Killed(RuntimeError):
    """Stands for the server process dying in the middle of round 3."""


async def test_a_resumed_server_continues_its_mlflow_run(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = _unique("resume")
    spec = _spec(job_id, {"mlflow": {"tracking_uri": mlflow_server, "experiment": job_id,
                                     "registered_model": job_id}},
                 rounds=4, checkpoint_dir=str(tmp_path))

    def die_in_round_3(record: RoundRecord) -> None:
        if record.round == 3:  # after round 2's checkpoint, before round 3's
            raise Killed("server killed")

    # a killed process ends nothing: its MLflow run is left RUNNING
    with monkeypatch.context() as patch:
        patch.setattr(MlopsSession, "finish", lambda self, *a, **k: None)
        with pytest.raises(PodError, match="server killed"):  # clients: no grace to wait
            await run_actors(spec, prepare(spec).actors(spec), on_round=die_in_round_3,
                             grace=0.1)
    (first,) = _runs(mlflow_server, job_id)
    assert first.info.status == "RUNNING"

    result = await run_job(spec)  # the restarted server resumes from round 2's checkpoint
    assert [r.round for r in result.history] == [1, 2, 3, 4]
    (run,) = _runs(mlflow_server, job_id)  # still one run...
    assert run.info.run_id == first.info.run_id
    assert run.info.status == "FINISHED"  # ...and it ended
    assert run.data.tags["foedus.resumed"] == "1"
    history = _client(mlflow_server).get_metric_history(run.info.run_id, "server_accuracy")
    assert {m.step for m in history} == {1, 2, 3, 4}
    # (round 3 may be logged twice: by the killed server, then by the resumed one)
    assert [m.value for m in history if m.step == 4] == [result.history[-1].metrics["accuracy"]]
    version = _client(mlflow_server).get_model_version(job_id, result.extra[
        "mlflow_model_version"])
    assert version.run_id == run.info.run_id and version.tags["foedus.rounds"] == "4"


async def test_the_registered_model_loads_and_predicts_with_mlflow_pyfunc(
    mlflow_server: str,
) -> None:
    import mlflow

    job_id = _unique("pyfunc")
    spec = _spec(job_id, {"mlflow": {"tracking_uri": mlflow_server, "experiment": job_id,
                                     "registered_model": job_id}})
    result = await run_job(spec)
    uri = f"models:/{job_id}/{result.extra['mlflow_model_version']}"
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.signature is not None
    assert model.metadata.flavors["foedus"]["model_type"] == "sklearn-sgd"
    test = load_job_data(spec.data, ["client-000", "client-001"], spec.seed).test
    rows = np.asarray(test.x, dtype=np.float32)
    predicted = model.predict(rows[:5])
    assert predicted.shape == (5,) and set(predicted) <= {0, 1, 2}
    # the loaded model is the server's final model: same accuracy on the same held-out rows
    accuracy = float(np.mean(model.predict(rows) == test.y))
    assert accuracy == pytest.approx(result.final_metrics["accuracy"])


# ---- Prometheus ------------------------------------------------------------------------------
def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _query(prom: str, expr: str) -> list[Any]:
    answer = _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _range(prom: str, expr: str, start: float) -> list[Any]:
    """What a Grafana panel plots: a range query from ``start`` to now (an instant query after
    the job would find its series already marked stale, the endpoint being gone)."""
    answer = _get(f"{prom}/api/v1/query_range?" + urllib.parse.urlencode({
        "query": expr, "start": f"{start:.3f}", "end": f"{time.time() + 1:.3f}", "step": "0.25",
    }))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _last(series: list[Any]) -> float:
    (one,) = series
    return float(one["values"][-1][1])


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling interval of a condition, not a guess at a duration
    return value


async def test_prometheus_sees_every_round_and_every_panel_of_runner_jobs(
    prometheus: Any,
) -> None:
    """Two real jobs, as one dashboard selecting both shows them: a plain one, and one with
    central DP (only it has an epsilon; it drops clients' metrics, which are computed on private
    data, so only the plain one fills the clients' weighted-mean panel)."""
    plain, private = _unique("prom-plain"), _unique("prom-dp")
    ports = {plain: free_port(), private: free_port()}
    prom = prometheus([f"127.0.0.1:{p}" for p in ports.values()])
    rounds = 4
    began = time.time() - 5
    results = {}
    for job_id, pipeline in ((plain, []), (private, [{
        "type": "central-dp", "params": {"clients_per_round": 2, "noise_multiplier": 0.5}}])):
        spec = _spec(job_id, {"prometheus": {"port": ports[job_id], "linger_s": 30}},
                     rounds=rounds, pipeline=pipeline)

        def first_round_scraped(record: RoundRecord, job_id: str = job_id) -> None:
            # one sample while the job runs, so rate() has two points with the final one
            if record.round == 1:
                _wait("round 1 scraped",
                      lambda: _query(prom, f'foedus_round{{fl_job="{job_id}"}}'))

        results[job_id] = await run_job(spec, on_round=first_round_scraped)

    # the endpoints are gone now: everything below was scraped before each job let it go
    for job_id, result in results.items():
        assert _last(_range(prom, f'foedus_round{{fl_job="{job_id}"}}', began)) == rounds
        sent = _range(prom, f'foedus_bytes_sent_total{{fl_job="{job_id}",fl_role="server"}}',
                      began)
        assert _last(sent) == sum(r.bytes_out for r in result.history) > 0
        received = _range(prom, f'foedus_bytes_received_total{{fl_job="{job_id}"}}', began)
        assert _last(received) == sum(r.bytes_in for r in result.history) > 0
    assert _range(prom, f'foedus_privacy_epsilon{{fl_job="{private}"}}', began)
    both = f"{plain}|{private}"  # the dashboard's job variable with both selected
    for title, exprs in dashboard_panels():
        answers = [_range(prom, e.replace("$fl_job", both), began) for e in exprs]
        assert any(answers), f"panel {title!r} has no data: {exprs}"
