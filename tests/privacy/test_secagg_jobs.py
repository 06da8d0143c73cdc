"""Secure sum from a job file: ``type: secure-sum`` in the pipeline makes the job runner build the
secure graphs, in one process and as separate ``foedus server`` / ``foedus client`` processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from foedus.config.parts import build_parts
from foedus.config.spec import JobSpec
from foedus.config.topology import topology_of
from foedus.core.errors import ConfigError
from foedus.roles.secure_server import SecureServerPod
from foedus.runner import run_assembly, run_job_sync
from foedus.transport.local import LocalTransport
from tests.processes import run_server_and_clients
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name

CLIENTS, ROUNDS = 6, 4


def spec(pipeline: list[dict[str, Any]], **overrides: Any) -> JobSpec:
    job: dict[str, Any] = {
        "job_id": "secure-job", "seed": 0, "rounds": ROUNDS, "round_timeout": 30,
        "data": {"dataset": "digits", "partition": "iid"}, "clients": {"count": CLIENTS},
        "pipeline": pipeline,
    }
    job.update(overrides)
    return JobSpec.from_dict(job)


def secure_sum(**params: Any) -> dict[str, Any]:
    return {"type": "secure-sum", "params": params}


def test_a_secure_sum_job_learns_as_well_as_the_same_job_without_it() -> None:
    plain = run_job_sync(spec([]))
    secure = run_job_sync(spec([secure_sum(threshold=4, step_timeout=10)]))

    assert [r.accepted for r in secure.history] == [CLIENTS] * ROUNDS
    # the server saw one unmasked sum per round, over every client, and no client's metrics
    assert all(r.metrics["secure_sum_survivors"] == CLIENTS for r in secure.history)
    assert all(r.metrics["secure_sum_dropped"] == 0 for r in secure.history)
    assert all(not r.client_metrics for r in secure.history)
    assert plain.history[-1].client_metrics  # ... which the plain server does see
    assert abs(secure.final_metrics["accuracy"] - plain.final_metrics["accuracy"]) < 0.02
    assert secure.final_metrics["accuracy"] > 0.8  # chance is 0.1


def test_clipping_before_the_secure_sum_runs_and_builds_a_secure_server() -> None:
    job = spec([{"type": "clip", "params": {"clip_norm": 5.0}}, secure_sum(max_dropouts=2)],
               rounds=2)
    built = topology_of(job).build(build_parts(job), ["server"], lambda _actor: LocalTransport())
    assert isinstance(built.runtimes["server"].graph.pods["server"], SecureServerPod)
    result = run_job_sync(job)
    assert [(r.accepted, r.status) for r in result.history] == [(CLIENTS, "ok")] * 2
    assert result.history[-1].metrics["secure_sum_survivors"] == CLIENTS


@pytest.mark.parametrize(("pipeline", "overrides", "problem"), [
    ([secure_sum(threshold=7)], {}, "threshold=7 is above the job's 6 clients"),
    ([secure_sum(threshold=3)], {}, "threshold must be more than half"),
    ([secure_sum(max_dropouts=3)], {},  # was "threshold must be more than half ... (got 3)"
     r"^pipeline\[0\] \(secure-sum\): max_dropouts=3 of the job's 6 clients \(clients.count\) "
     r"leaves 3 to sum, not more than half of them: max_dropouts may be at most 2"),
    ([secure_sum()], {}, "exactly one of threshold"),
    ([secure_sum(threshold=4, ring_bits=48)], {}, "ring_bits must be 32 or 64"),
    ([secure_sum(threshold=4, value_range="1e6")], {},  # YAML reads 1e6 as text
     r"value_range must be a number, got '1e6' \(text, not a number: YAML reads 1e6 as text; "
     r"write it with a decimal point, as in 1\.0e-5\)"),
    ([secure_sum(threshold="4")], {}, r"threshold must be an integer, got '4' \(text"),
    ([secure_sum(threshold=4, weighting="median")], {}, "weighting must be"),
    ([secure_sum(threshold=4, colour="red")], {}, "no parameter 'colour'"),
    ([secure_sum(threshold=4)], {"clients": {"count": CLIENTS, "per_round": 3}},
     "every client each round"),
    ([secure_sum(threshold=4)], {"topology": {"type": "swarm"}}, "topology centralized"),
    ([secure_sum(threshold=4), {"type": "zstd"}], {}, "stages after secure-sum"),
    ([secure_sum(threshold=4), {"type": "qsgd"}], {}, "only lossless codecs"),
    ([{"type": "central-dp", "params": {"clients_per_round": CLIENTS, "noise_multiplier": 1.0}},
      secure_sum(threshold=4)], {}, "server half"),
    ([secure_sum(threshold=4)], {"aggregator": "median"}, "must be FedAvg or a server optimiser"),
])
def test_a_bad_secure_sum_setting_is_a_one_line_config_error(
    pipeline: list[dict[str, Any]], overrides: dict[str, Any], problem: str,
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        build_parts(spec(pipeline, **overrides))
    assert "\n" not in str(caught.value)


def test_the_simulator_refuses_a_secure_sum_job_up_front() -> None:
    from foedus.sim import run_simulation_sync

    with pytest.raises(ConfigError, match="simulator does not build"):
        run_simulation_sync(spec([secure_sum(threshold=4)]))


@pytest.mark.integration
def test_server_and_three_client_processes_secure_sum_over_mqtt(
    mosquitto: Mosquitto, tmp_path: Path,
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "job_id: secure-processes\nrounds: 2\nround_timeout: 60\nseed: 0\n"
        "clients: {count: 3}\ndata: {dataset: digits, partition: iid}\n"
        "pipeline:\n  - {type: clip, params: {clip_norm: 5.0}}\n"
        "  - {type: secure-sum, params: {threshold: 2, step_timeout: 20}}\n"
        f"transport: {{type: mqtt, params: {{host: 127.0.0.1, port: {mosquitto.plain_port}}}}}\n"
    )
    run = run_server_and_clients(job, server_cwd=tmp_path, client_cwds=[tmp_path] * 3,
                                 timeout=120)
    history = run.summary["history"]
    assert [(r["accepted"], r["status"]) for r in history] == [(3, "ok"), (3, "ok")]
    assert all(r["metrics"]["secure_sum_survivors"] == 3 for r in history)


async def test_a_client_that_never_takes_part_is_counted_as_dropped() -> None:
    """One of the six clients died before the job: every round sums the other five, and the
    record says one participant's input is missing (it used to say dropped 0)."""
    job = spec([secure_sum(max_dropouts=1, step_timeout=5)], rounds=2, round_timeout=20,
               clients={"count": CLIENTS, "min_clients": CLIENTS - 1})
    shared = LocalTransport()
    alive = [a for a in topology_of(job).actors(job) if a != "client-005"]
    built = topology_of(job).build(build_parts(job), alive, lambda _actor: shared)
    await run_assembly(built)
    history = built.history()
    assert [r.status for r in history] == ["ok", "ok"]
    assert all(r.metrics["secure_sum_survivors"] == CLIENTS - 1 for r in history)
    assert all(r.metrics["secure_sum_dropped"] == 1 for r in history)
