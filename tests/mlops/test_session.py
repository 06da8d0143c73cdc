"""The ``mlops:`` job-file section: validation, and every integration attached to a server."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, TransportError
from foedus.mlops.session import MlopsSession
from foedus.roles.server import RoundRecord
from foedus.runner import run_job
from tests.mlops.conftest import build_job, run_graphs_of, scrape
from tests.mlops.test_artifacts import refusing_url


@pytest.mark.parametrize(("config", "message"), [
    ({"grafana": {}}, "mlops.grafana: unknown section"),
    ({"mlflow": {"experiment": "x"}}, "mlops.mlflow.tracking_uri: required"),
    ({"mlflow": {"tracking_uri": "http://x", "colour": 1}}, "mlops.mlflow.colour: unknown key"),
    ({"s3": {"endpoint_url": "http://x"}}, "mlops.s3.url: required"),
    ({"prometheus": 9400}, "mlops.prometheus: expected a mapping"),
])
def test_bad_sections_are_refused_naming_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MlopsSession(config, job_id="j")


def test_an_empty_section_turns_nothing_on() -> None:
    session = MlopsSession(None, job_id="j")
    assert session.checkpointer() is None and session.tracker is None
    assert session.finish() is None


async def test_a_job_whose_s3_endpoint_is_down_fails_before_round_1_naming_mlops_s3() -> None:
    """The server's first checkpoint listing waited out boto's retries (~11 s) and ended the
    job as a failed pod ("pod 'server', wire 'run': ... list failed"), logged twice; now
    the session checks the bucket as the server is built, before anything runs: one line
    naming mlops.s3."""
    url, sock = refusing_url()
    rounds: list[RoundRecord] = []
    with sock:
        spec = JobSpec.from_dict({
            "job_id": "s3-down", "rounds": 2, "clients": {"count": 2},
            "mlops": {"s3": {"url": "s3://foedus/ckpt", "endpoint_url": url,
                             "access_key": "test", "secret_key": "test"}}})
        # the check's own bound (one attempt, 2 s to connect) is timed in test_artifacts.py
        with pytest.raises(TransportError, match=r"^mlops.s3: s3://foedus: cannot reach the "
                                                 r"S3 endpoint at "):
            await asyncio.wait_for(run_job(spec, on_round=rounds.append), 60)
    assert rounds == []


@pytest.mark.integration
async def test_a_session_attaches_mlflow_s3_and_prometheus_to_a_server(
    mlflow_server: str, s3_endpoint: str,
) -> None:
    from tests.conftest import free_port

    job_id = f"session-{uuid.uuid4().hex[:8]}"
    port = free_port()
    session = MlopsSession({
        "mlflow": {"tracking_uri": mlflow_server, "experiment": job_id,
                   "registered_model": job_id, "checkpoint_every": 2},
        "s3": {"url": f"s3://foedus-session/{job_id}", "endpoint_url": s3_endpoint,
               "access_key": "test", "secret_key": "test", "create_bucket": True},
        "prometheus": {"port": port},
    }, job_id=job_id, job_params={"rounds": 2})
    job = build_job(job_id, rounds=2, clients=2, checkpointer=session.checkpointer())
    session.attach(job.server)
    try:
        await run_graphs_of(job)
        assert scrape(port)[f'foedus_round{{fl_job="{job_id}"}}'] == 2
    finally:
        registered = session.finish()
    assert registered is not None and registered.version == "1"
    assert session.tracker is not None and session.tracker.rounds_logged == 2
    checkpoint = session.checkpointer()
    assert checkpoint is not None and (ckpt := checkpoint.load()) is not None
    assert ckpt.round == 2
