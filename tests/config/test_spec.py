"""Job files are validated into a JobSpec; every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize(("text", "message"), [
    ("pipeline:\n  - {type: central-dp, noise_multiplier: 1.0, clients_per_round: 5}\n",
     "pipeline[0].clients_per_round: unknown key; allowed: type, params (put the stage's "
     "settings under params:, e.g. {type: central-dp, params: {noise_multiplier: 1.0, "
     "clients_per_round: 5}})"),
    ("model: {type: sklearn-sgd, alpha: 0.001}\n",
     "model.alpha: unknown key; allowed: type, params (put the model's settings under params:, "
     "e.g. {type: sklearn-sgd, params: {alpha: 0.001}})"),
    ("aggregator: {type: fedavgm, momentum: 0.9}\n", "(put the aggregator's settings under "
     "params:, e.g. {type: fedavgm, params: {momentum: 0.9}})"),
    ("transport: {type: mqtt, host: 127.0.0.1}\n", "(put the transport's settings under "
     "params:, e.g. {type: mqtt, params: {host: 127.0.0.1}})"),
    ("topology: {type: hierarchical, edges: 2}\n", "(put the topology's settings under "
     "params:, e.g. {type: hierarchical, params: {edges: 2}})"),
])
def test_plugin_settings_written_beside_type_are_refused_saying_to_put_them_under_params(
        tmp_path: Path, text: str, message: str) -> None:
    """They used to get only "unknown key; allowed: type, params", which does not say where
    the settings go; the refusal now shows the same section rewritten with params:."""
    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_job(job)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_long_misplaced_setting_is_shown_shortened_in_the_params_hint() -> None:
    with pytest.raises(ConfigError) as err:
        JobSpec.from_dict({"model": {"type": "sklearn-sgd", "blob": "x" * 500}})
    assert str(err.value).endswith("e.g. {type: sklearn-sgd, params: {blob: ...}})")


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


# ---- hostile or absurd job files: refused in one line, quickly, never walked for ever -------
def refusal(tmp_path: Path, content: str | bytes) -> str:
    """The one-line refusal of a job file holding ``content``."""
    path = tmp_path / "job.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as err:
        load_job(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    return message


@pytest.mark.parametrize("section", ["data.options", "transport.params", "model.params",
                                     "mlops.mlflow"])
def test_an_alias_bomb_in_any_section_is_refused_without_walking_it(
    tmp_path: Path, section: str,
) -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    outer, inner = section.split(".")
    body = "\n".join(f"    {line}" for line in lines)
    text = f"job_id: bomb\n{outer}:\n  {inner}:\n{body}\n"
    if outer in ("transport", "model"):
        text = f"job_id: bomb\n{outer}:\n  type: local\n  {inner}:\n{body}\n"
    message = refusal(tmp_path, text)
    assert "more than 100000 values" in message


@pytest.mark.parametrize(("content", "expected"), [
    (b"job_id: caf\xe9\n", "is not UTF-8 text (byte 11)"),
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("job_id: x\ndata:\n  options:\n    o: " + "[" * 5000 + "]" * 5000 + "\n",
     "nested deeper than"),
    ("job_id: x\ndata:\n  options:\n    o: " + "[" * 40 + "]" * 40 + "\n",
     "nested deeper than 32 levels"),
    ("job_id: x\nround_timeout: .nan\n", "round_timeout: expected a positive number, got nan"),
    ("job_id: x\nround_timeout: .inf\n", "round_timeout: expected a positive number, got inf"),
    ("job_id: x\ndata:\n  alpha: .nan\n", "data.alpha: expected a positive number, got nan"),
    ("job_id: x\nclients:\n  count: 1000000000000\n",
     "clients.count: expected an integer >= 1, got 1000000000000 (at most 100000)"),
    ("job_id: x\nclients:\n  epochs: 1000000000\n", "clients.epochs: expected an integer >= 1"),
    ("job_id: x\nrounds: 1000000000\n", "rounds: expected an integer >= 1"),
    ('job_id: "x\\n"\n', "job_id: expected a letter or digit"),
    ("job_id: x\nmlops:\n  prometheus:\n    port: 70000\n",
     "mlops.prometheus.port: expected a port 0..65535 (0: any free one), got 70000"),
    ("job_id: x\nmlops:\n  prometheus:\n    host: 'evil host;rm'\n",
     "mlops.prometheus.host: expected a host name or address"),
    ("job_id: x\nmlops:\n  mlflow:\n    tracking_uri: 'not a uri'\n",
     "mlops.mlflow.tracking_uri: expected a URI without spaces"),
    ("job_id: x\nmlops:\n  s3:\n    endpoint_url: 'http://:99999'\n",
     "mlops.s3.endpoint_url: expected a URI with a valid port"),
    ("job_id: x\nmlops:\n  mlflow:\n    tracking_uri: 'localhost'\n",
     "expected a URI with a scheme"),
])
def test_hostile_and_absurd_job_files_are_refused_in_one_line(
    tmp_path: Path, content: str | bytes, expected: str,
) -> None:
    assert expected in refusal(tmp_path, content)


def test_a_checkpoint_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    message = refusal(tmp_path, f"job_id: x\ncheckpoint_dir: {tmp_path / 'file'}\n")
    assert "checkpoint_dir:" in message and "is not a directory" in message


def test_well_formed_endpoints_and_the_documented_maxima_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("job_id: ok\nclients: {count: 100000, epochs: 10000}\nrounds: 1000000\n"
                    "mlops:\n  prometheus: {port: 9100, host: 127.0.0.1}\n"
                    "  mlflow: {tracking_uri: 'file:./mlruns'}\n"
                    "  s3: {endpoint_url: 'http://[::1]:9000'}\n")
    spec = load_job(path)
    assert (spec.clients.count, spec.rounds) == (100_000, 1_000_000)


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe job", "not UTF-8"),
    ("job_id: x\nround_timeout: .nan\n", "round_timeout"),
])
def test_the_cli_refuses_a_bad_job_file_with_exit_2_and_one_line(
    tmp_path: Path, content: str | bytes, expected: str,
) -> None:
    import subprocess
    import sys

    path = tmp_path / "job.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = subprocess.run([sys.executable, "-m", "foedus.cli", "run", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("foedus: error: ") and expected in lines[0]


# ---- libyaml reads job files; every answer is the pure-Python parser's ----------------------
def outcome(path: Path) -> JobSpec | str:
    """What load_job makes of ``path``: the spec, or the refusal's text."""
    try:
        return load_job(path)
    except ConfigError as exc:
        return str(exc)


@pytest.mark.parametrize("content", [
    *(p.read_text() for p in EXAMPLES),
    "rounds: [1,\n",  # libyaml words this refusal differently
    "job_id: x\nseed: 1\n\tbad: tab\n",
    "job_id: x\ndata: {dataset: iris\n",
    "job_id: x\ndata:\n  options:\n    o: " + "[" * 900 + "]" * 900 + "\n",  # libyaml nests
    "job_id: x\ndata:\n  options:\n    o: " + "[" * 5000 + "]" * 5000 + "\n",  # 1000 deep
    "job_id: x\ndata:\n  options:\n    o: " + "[" * 40 + "]" * 40 + "\n",
    "job_id: x\nmodel: &m {type: sklearn-sgd}\naggregator: *m\n",
    "job_id: x\nrounds: 0x10\nround_timeout: 1_000\nseed: 0o17\n",
    "job_id: x\nrounds: 3\nrounds: 4\n",
    "job_id: x\ndata: {dataset: digits, partition: iid}\n...\n---\nrounds: 2\n",
], ids=lambda c: c[:30])
def test_libyaml_and_the_pure_python_parser_give_every_job_file_the_same_answer(
    tmp_path: Path, content: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hasattr(yaml, "CSafeLoader"), "PyYAML without libyaml: this test compares nothing"
    path = tmp_path / "job.yaml"
    path.write_text(content)
    fast = outcome(path)
    monkeypatch.delattr(yaml, "CSafeLoader")  # the parser every job file was read with before
    assert fast == outcome(path)


def test_a_yaml_refusal_quotes_the_line_as_the_pure_python_parser_does(tmp_path: Path) -> None:
    message = refusal(tmp_path, "rounds: [1,\n")
    assert "^" in message and "did not find expected" not in message  # not libyaml's wording
