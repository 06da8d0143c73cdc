"""Job files are validated into a JobSpec; every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from foedus.config.spec import JobSpec, load_job
from foedus.core.errors import ConfigError

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_a_valid_job(path: Path) -> None:
    spec = load_job(path)
    assert spec.rounds >= 1 and spec.clients.count >= 1


def test_defaults_fill_missing_sections() -> None:
    spec = JobSpec.from_dict({})
    assert (spec.data.dataset, spec.aggregator.type, spec.transport.type) == (
        "digits", "fedavg", "local"
    )


@pytest.mark.parametrize(("raw", "message"), [
    ({"roundz": 3}, "roundz: unknown key; allowed: job_id, seed, rounds"),
    ({"rounds": "ten"}, "rounds: expected an integer >= 1, got 'ten'"),
    ({"rounds": 0}, "rounds: expected an integer >= 1, got 0"),
    ({"clients": {"count": 2, "min_clients": 3}}, "clients.min_clients: expected at most"),
    ({"clients": {"cnt": 2}}, "clients.cnt: unknown key; allowed: count, epochs, min_clients"),
    ({"data": {"partition": "shards"}},
     "data.partition: got 'shards'; allowed: column, dirichlet, files, iid, quantity"),
    ({"data": {"alpha": -1}}, "data.alpha: expected a positive number"),
    ({"data": []}, "data: expected a mapping"),
    ({"model": {"name": "x"}}, "model.name: unknown key; allowed: type, params"),
    ({"model": 3}, "model: expected a name or"),
    ({"pipeline": [{"type": "zstd", "level": 3}]}, "pipeline[0].level: unknown key"),
    ([1, 2], "job: expected a mapping"),
])
def test_mistakes_name_the_key_and_the_allowed_values(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        JobSpec.from_dict(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read job file"):
        load_job(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(bad)


def test_clients_max_examples_bounds_the_weight_one_update_may_claim() -> None:
    assert JobSpec.from_dict({}).clients.max_examples is None  # no bound unless asked
    assert JobSpec.from_dict({"clients": {"max_examples": 5000}}).clients.max_examples == 5000
    with pytest.raises(ConfigError, match=r"clients\.max_examples: expected an integer >= 1"):
        JobSpec.from_dict({"clients": {"max_examples": 0}})
