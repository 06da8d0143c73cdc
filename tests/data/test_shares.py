"""A job file's data section: quantity and column splits, and per-client files where each
client reads only its own file, agrees on the columns and classes, and the federation learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from foedus.config.parts import build_parts, client_id
from foedus.config.spec import JobSpec, load_job
from foedus.core.errors import ConfigError
from foedus.runner import run_job_sync
from foedus.sim import run_simulation_sync
from tests.data.support import PIXELS, digits_files


def _files_job(template: str, holdout: str | None, clients: int = 5, **data: Any) -> JobSpec:
    options = {"path": template, "label": "digit", "features": PIXELS,
               "classes": list(range(10))}
    section: dict[str, Any] = {"dataset": "csv", "partition": "files", "options": options,
                               **data}
    if holdout:
        section["server_options"] = {"path": holdout}
    return JobSpec.from_dict({"job_id": "files", "rounds": 5, "data": section,
                              "clients": {"count": clients, "epochs": 2}})


def test_a_federation_of_per_client_csv_files_learns_digits(tmp_path: Path) -> None:
    template, holdout = digits_files(tmp_path, 5)
    result = run_job_sync(_files_job(template, holdout))
    accuracies = [r.metrics["accuracy"] for r in result.history]
    assert accuracies[-1] >= 0.9 and accuracies[-1] > accuracies[0] - 0.02
    assert all(r.accepted == 5 for r in result.history)


def test_each_client_trains_on_exactly_its_own_file(tmp_path: Path) -> None:
    template, holdout = digits_files(tmp_path, 3)
    parts = build_parts(_files_job(template, holdout, clients=3))
    for i, share in enumerate(parts.shares):
        own = pd.read_csv(template.format(client=client_id(i)))
        assert np.allclose(share.x, own[PIXELS].to_numpy(np.float32))
        assert share.y.tolist() == own["digit"].tolist()
    assert len(parts.test) == len(pd.read_csv(holdout))
    assert parts.data_spec.feature_names == tuple(PIXELS)


def test_a_client_process_reads_only_its_own_file(tmp_path: Path) -> None:
    template, holdout = digits_files(tmp_path, 3)
    for other in (0, 2):
        Path(template.format(client=client_id(other))).unlink()
    Path(holdout).unlink()
    spec = _files_job(template, holdout, clients=3)
    parts = build_parts(spec, clients=(1,), server_data=False)  # as run_client builds it
    assert len(parts.shares[1]) > 0 and parts.evaluate is None
    with pytest.raises(ConfigError, match=r"client-000\.csv' does not exist"):
        build_parts(spec)  # the in-process run needs every file, and says which is missing


def test_without_server_data_the_server_does_not_evaluate_but_clients_report(
    tmp_path: Path
) -> None:
    template, _ = digits_files(tmp_path, 3)
    spec = JobSpec.from_dict({**_as_dict(_files_job(template, None, clients=3)), "rounds": 2})
    result = run_job_sync(spec)
    assert [r.metrics for r in result.history] == [{}, {}]
    assert all(r.accepted == 3 and r.client_metrics for r in result.history)


def _as_dict(spec: JobSpec) -> dict[str, Any]:
    data = spec.data
    section = {"dataset": data.dataset, "partition": data.partition, "options": data.options}
    return {"job_id": spec.job_id, "rounds": spec.rounds, "data": section,
            "clients": {"count": spec.clients.count, "epochs": spec.clients.epochs}}


def test_per_client_files_run_in_the_simulator_too(tmp_path: Path) -> None:
    template, holdout = digits_files(tmp_path, 4)
    result = run_simulation_sync(_files_job(template, holdout, clients=4))
    assert result.final_metrics["accuracy"] >= 0.85


def test_a_yaml_job_file_with_per_client_parquet_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        x = rng.normal(size=(30, 2))
        frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1],
                              "label": np.where(x[:, 0] > 0, "yes", "no")})
        frame.to_parquet(tmp_path / f"{client_id(i)}.parquet", index=False)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "rounds": 2, "clients": {"count": 2},
        "data": {"dataset": "parquet", "partition": "files",
                 "options": {"path": str(tmp_path / "{client}.parquet"), "label": "label",
                             "features": ["a", "b"], "classes": ["no", "yes"]}},
    }))
    parts = build_parts(load_job(job))
    assert parts.data_spec.class_names == ("no", "yes")
    assert [len(s) for s in parts.shares] == [30, 30]


@pytest.mark.parametrize(("options", "extra", "message"), [
    ({"features": None}, {}, "data.options.features: required with partition: files"),
    ({"classes": None}, {}, "data.options.classes: required with partition: files"),
    ({"task": "ranking"}, {}, "data.options.task: got 'ranking'"),
    ({"path": "same.csv"}, {}, r"needs \{client\} in an option"),
    ({"classes": list(range(9))}, {}, r"values not in classes"),
    ({"features": PIXELS[:10]}, {"server_options": {"path": "{client}.csv"}},
     "server.csv' does not exist"),
])
def test_per_client_file_mistakes_are_named(
    tmp_path: Path, options: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    template, _ = digits_files(tmp_path, 2)
    job = _as_dict(_files_job(template, None, clients=2))
    job["data"]["options"] = {k: v for k, v in {**job["data"]["options"], **options}.items()
                              if v is not None}
    if "server_options" in extra:
        job["data"]["server_options"] = extra["server_options"]
        job["data"]["options"]["path"] = str(tmp_path / "{client}.csv")
    if "topology" in extra:
        job["topology"] = extra["topology"]
    with pytest.raises(ConfigError, match=message):
        build_parts(JobSpec.from_dict(job))


def _hospital_csv(tmp_path: Path, sites: int = 4) -> str:
    rng = np.random.default_rng(1)
    rows = 400
    x = rng.normal(size=(rows, 3))
    frame = pd.DataFrame({"hospital": rng.permutation(np.arange(rows) % sites) + 10,
                          "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                          "y": (x[:, 0] + x[:, 1] > 0).astype(int)})
    path = tmp_path / "hospitals.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _column_job(path: str, clients: int = 4, **data: Any) -> JobSpec:
    return JobSpec.from_dict({
        "rounds": 3, "clients": {"count": clients},
        "data": {"dataset": "csv", "partition": "column", "column": "hospital",
                 "options": {"path": path, "label": "y"}, **data},
    })


def test_a_column_split_gives_each_hospital_its_own_client_without_the_id(
    tmp_path: Path
) -> None:
    path = _hospital_csv(tmp_path)
    parts = build_parts(_column_job(path))
    assert parts.data_spec.feature_names == ("a", "b", "c") and parts.test.x.shape[1] == 3
    assert all(s.x.shape[1] == 3 for s in parts.shares)
    assert sum(len(s) for s in parts.shares) + len(parts.test) == 400
    kept = build_parts(_column_job(path, keep_column=True))
    assert [np.unique(s.x[:, 0]).tolist() for s in kept.shares] == [[10], [11], [12], [13]]
    result = run_job_sync(_column_job(path))
    assert result.final_metrics["accuracy"] >= 0.85


def test_a_column_split_needs_one_client_per_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"4 distinct values but clients\.count is 3"):
        build_parts(_column_job(_hospital_csv(tmp_path), clients=3))


def test_quantity_skew_from_a_job_file_is_seeded_and_uneven() -> None:
    def sizes(seed: int) -> list[int]:
        spec = JobSpec.from_dict({"seed": seed, "clients": {"count": 8},
                                  "data": {"partition": "quantity", "alpha": 0.3,
                                           "min_size": 10}})
        return [len(s) for s in build_parts(spec).shares]

    first = sizes(0)
    assert first == sizes(0) != sizes(1)
    assert min(first) >= 10 and max(first) > 3 * min(first)


@pytest.mark.parametrize(("data", "message"), [
    ({"partition": "shards"}, "data.partition: got 'shards'; allowed: column, dirichlet, files"),
    ({"partition": "column"}, "data.column: partition: column needs a feature index"),
    ({"partition": "column", "column": -1}, "needs a feature index"),
    ({"partition": "iid", "column": 2}, "data.column: only used with partition: column"),
    ({"partition": "column", "column": 0, "keep_column": "yes"}, "expected true or false"),
    ({"partition": "iid", "server_options": {"path": "x"}}, "only used with partition: files"),
    ({"min_size": 0}, "data.min_size: expected an integer >= 1"),
])
def test_data_section_mistakes_are_caught_when_the_job_is_read(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        JobSpec.from_dict({"data": data})


@pytest.mark.parametrize(("options", "partition", "message"), [
    ({"seed": 3}, "iid", "data.options.seed: set by the job; use seed instead"),
    ({"test_fraction": 0.5}, "iid", "use data.test_fraction instead"),
    ({"path": "data/{client}.csv", "label": "y"}, "iid", "that needs partition: files"),
])
def test_data_option_mistakes_are_named_before_loading(
    options: dict[str, Any], partition: str, message: str
) -> None:
    spec = JobSpec.from_dict({"data": {"dataset": "csv", "partition": partition,
                                       "options": options}})
    with pytest.raises(ConfigError, match=message):
        build_parts(spec)
