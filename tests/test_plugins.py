"""The user's own plugin modules, named in FOEDUS_PLUGINS, are imported before a job is built,
so a job file can name a dataset loader (or any plugin) they register, without import paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foedus.core.errors import ConfigError
from foedus.plugins import PLUGINS_ENV, load_plugins, user_modules

ROOT = Path(__file__).parents[1]

PLUGIN = '''
"""A site's own data, registered under a name a job file can use."""
from foedus.data.datasets import Dataset, DataSpec, datasets, split_dataset


@datasets.register("my-data")
def my_data(scale: float = 1.0, test_fraction: float = 0.2, seed: int = 0):
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    train, test = split_dataset(Dataset((x * scale).astype("float32"), y), test_fraction, seed,
                                stratify=True)
    return train, test, DataSpec(4, (0, 1, 2))
'''


def _plugin(tmp_path: Path) -> None:
    (tmp_path / "site_data.py").write_text(PLUGIN)


def _run(tmp_path: Path, plugins: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "job.yaml").write_text(
        "job_id: plugin-job\nrounds: 3\nclients: {count: 3}\n"
        "data: {dataset: my-data, partition: iid, options: {scale: 0.5}}\n"
    )
    env = {**os.environ, PLUGINS_ENV: plugins,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    return subprocess.run(
        [sys.executable, "-m", "foedus.cli", "run", str(tmp_path / "job.yaml"), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_job_file_names_a_dataset_registered_by_a_plugin_module(tmp_path: Path) -> None:
    _plugin(tmp_path)
    done = _run(tmp_path, "site_data")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rounds"] == 3 and summary["final_accuracy"] > 0.6


def test_without_the_plugin_module_the_dataset_is_unknown(tmp_path: Path) -> None:
    _plugin(tmp_path)
    done = _run(tmp_path, "")
    assert done.returncode != 0 and "unknown dataset 'my-data'" in done.stderr


def test_a_missing_plugin_module_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLUGINS_ENV, " json , no_such_module_here ,")
    assert user_modules() == ["json", "no_such_module_here"]
    with pytest.raises(ConfigError, match="cannot import plugin module 'no_such_module_here'"):
        load_plugins()
