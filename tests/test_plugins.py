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
from foedus.plugins import PLUGINS_ENV, catalogue, format_catalogue, load_plugins, user_modules

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


# ---- plugins discovered through entry points ----------------------------------------------------
TOY = '''
"""A third party's aggregator, in a package foedus knows nothing about."""
from foedus.aggregate.base import aggregators
from foedus.aggregate.reference import ReferenceFedAvg


@aggregators.register("toy")
class Toy(ReferenceFedAvg):
    pass
'''


def _distribution(site: Path, name: str, entry_points: str,
                  group: str = "foedus.plugins") -> None:
    """A distribution as pip would leave it, without pip: a dist-info directory on the path.
    ``entry_points`` are lines of ``group``, or whole sections if they start with one."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    text = entry_points if entry_points.startswith("[") else f"[{group}]\n{entry_points}"
    (info / "entry_points.txt").write_text(f"{text}\n")


def _python(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")])}
    env.pop(PLUGINS_ENV, None)
    return subprocess.run([sys.executable, "-c", code], cwd=site, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_installed_package_s_aggregator_is_known_after_import_foedus(tmp_path: Path) -> None:
    (tmp_path / "toy_fl.py").write_text(TOY)
    _distribution(tmp_path, "toy_fl", "toy = toy_fl")
    done = _python(tmp_path, "import foedus\n"
                             "agg = foedus.aggregators.create('toy')\n"
                             "print(type(agg).__module__, 'toy' in foedus.aggregators.names())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["toy_fl", "True"]


def test_a_plugin_package_that_cannot_be_imported_is_named_in_a_one_line_error(
    tmp_path: Path,
) -> None:
    _distribution(tmp_path, "broken_fl", "broken = broken_fl_missing_module")
    done = _python(tmp_path, "import foedus\nfoedus.aggregators.create('fedavg')")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("foedus.core.errors.ConfigError: plugin 'broken' of broken_fl "
                           "(broken_fl_missing_module) cannot be imported"), last


def test_every_registry_is_complete_after_import_foedus_without_loading_extras(
    tmp_path: Path,
) -> None:
    heavy = ["torch", "keras", "aiokafka", "paho", "grpc", "aiohttp", "httpx", "xgboost",
             "zstandard", "numba", "dp_accounting", "pandas", "pyarrow", "ray", "mlflow"]
    done = _python(tmp_path, "import sys, foedus\n"
                             "print('zstd' in foedus.stages, 'kafka' in foedus.transports,\n"
                             "      'tree-bagging' in foedus.aggregators)\n"
                             f"print([m for m in {heavy!r} if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True True True", "[]"]


def test_the_catalogue_lists_every_registered_plugin_with_its_extra() -> None:
    from foedus.aggregate.base import aggregators
    from foedus.core.filter import stages
    from foedus.transport.base import transports

    rows = catalogue()
    kinds = {r.kind for r in rows}
    assert {"aggregator", "pipeline stage", "model", "dataset", "transport"} <= kinds
    assert "topology" in kinds  # the topology registry, wherever it lives
    for registry in (aggregators, stages, transports):
        assert sorted(r.name for r in rows if r.kind == registry.kind) == registry.names()
    by_name = {(r.kind, r.name): r for r in rows}
    assert by_name["pipeline stage", "zstd"].extra == "compress"  # declared on ZstdStage
    assert by_name["pipeline stage", "lzma"].extra is None  # the stdlib's lzma
    assert by_name["pipeline stage", "local-dp"].extra == "privacy"  # REQUIRES_EXTRA, dp.py
    assert by_name["pipeline stage", "clip"].extra is None  # ClipStage declares "nothing"
    assert by_name["aggregator", "fedavg"].module == "foedus.aggregate.fedavg"


def test_the_catalogue_prints_as_an_aligned_table_one_plugin_a_line() -> None:
    from foedus.plugins import PluginInfo

    text = format_catalogue([PluginInfo("pipeline stage", "zstd", "foedus.compress.lossless",
                                        "compress"),
                             PluginInfo("aggregator", "fedavg", "foedus.aggregate.fedavg", None)])
    assert text.splitlines() == [
        "KIND            NAME    EXTRA             MODULE",
        "pipeline stage  zstd    foedus[compress]  foedus.compress.lossless",
        "aggregator      fedavg  -                 foedus.aggregate.fedavg",
    ]


# ---- foedus's own plugins are imported as lookups need them ------------------------------------
def test_foedus_s_entry_points_declare_exactly_what_its_modules_register() -> None:
    """pyproject.toml's entry points are the only list of foedus's plugins: each one names a
    plugin its module registers, and each plugin a foedus module registers has its entry point
    (a missing one would be found only by importing every plugin module, slowly)."""
    from foedus.plugins import (
        ENTRY_POINT_GROUP,
        _registries,
        entry_point_group,
        plugin_entry_points,
    )

    points = [ep for ep in plugin_entry_points() if ep.module.startswith("foedus.")]
    assert points and all(ep.group != ENTRY_POINT_GROUP for ep in points), \
        "foedus declares each plugin by kind and name, never a module as a whole"
    declared = {(ep.group, ep.name, ep.value) for ep in points}
    registered = {(entry_point_group(r.kind), r.name, r.module) for r in catalogue()
                  if r.module.startswith("foedus.")}
    groups = {entry_point_group(registry.kind) for registry in _registries()}
    assert {group for group, _, _ in declared} <= groups
    missing = "\n".join(f'[project.entry-points."{g}"] {n} = "{m}"'
                        for g, n, m in sorted(registered - declared))
    assert declared <= registered, f"declared but not registered: {sorted(declared - registered)}"
    assert registered <= declared, f"add to pyproject.toml (then reinstall):\n{missing}"
    assert len(declared) == len({(g, n) for g, n, _ in declared})  # each name once


def test_a_kind_s_entry_point_group_is_its_registry_s_kind() -> None:
    from foedus.plugins import entry_point_group

    assert entry_point_group("aggregator") == "foedus.aggregator"
    assert entry_point_group("pipeline stage") == "foedus.pipeline_stage"


def test_a_lookup_imports_the_module_registering_the_name_and_only_a_miss_imports_all(
    tmp_path: Path,
) -> None:
    code = ("import sys\n"
            "from foedus.core.filter import stages\n"
            "seen = lambda: [m in sys.modules for m in\n"
            "    ('foedus.compress.lossless', 'foedus.transport.grpc', 'foedus.vertical')]\n"
            "print('zstd' in stages, *seen())\n"
            "print('no-such-stage' in stages, *seen())\n")
    done = _python(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["True True False False", "False True True True"]


def test_a_third_party_plugin_registering_a_built_in_name_is_refused_at_the_first_lookup(
    tmp_path: Path,
) -> None:
    (tmp_path / "shadow_fl.py").write_text(
        "from foedus.core.filter import stages\n"
        "from foedus.compress.lossless import LzmaStage\n\n\n"
        "@stages.register('zstd')\n"
        "class Shadow(LzmaStage):\n    pass\n")
    _distribution(tmp_path, "shadow_fl", "shadow = shadow_fl")
    done = _python(tmp_path, "import foedus\nfoedus.aggregators.create('fedavg')")
    assert done.returncode != 0
    assert "pipeline stage 'zstd' is already registered" in done.stderr


def test_a_package_declaring_its_plugins_by_kind_and_name_is_imported_only_when_one_is_asked(
    tmp_path: Path,
) -> None:
    """The lazy form serves other packages as it serves foedus: nothing of theirs or of foedus's
    is imported until a lookup needs it, and a ``module:function`` entry point is called once."""
    (tmp_path / "toy_fl.py").write_text(TOY + (
        "\n\ncalls = []\n\n\n"
        "def register():\n"
        "    from foedus.compress.lossless import LzmaStage\n"
        "    from foedus.core.filter import stages\n\n"
        "    calls.append(1)\n"
        "    stages.register('toy-stage')(type('ToyStage', (LzmaStage,), {}))\n"))
    _distribution(tmp_path, "toy_fl", "[foedus.aggregator]\ntoy = toy_fl\n"
                                      "[foedus.pipeline_stage]\ntoy-stage = toy_fl:register")
    code = ("import sys, foedus\n"
            "seen = lambda: [m in sys.modules for m in\n"
            "    ('toy_fl', 'foedus.vertical', 'foedus.transport.grpc')]\n"
            "print('fedavg' in foedus.aggregators, *seen())\n"
            "print(type(foedus.aggregators.create('toy')).__module__, *seen())\n"
            "print('toy-stage' in foedus.stages, 'toy-stage' in foedus.stages, *seen())\n"
            "print('toy' in foedus.aggregators.names(), 'toy-stage' in foedus.stages.names(),\n"
            "      sys.modules['toy_fl'].calls, *seen())\n")
    done = _python(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True False False False", "toy_fl True False False",
                                        "True True True False False",
                                        "True True [1] True True True"]


def test_two_packages_declaring_one_kind_and_name_are_refused_at_the_first_lookup(
    tmp_path: Path,
) -> None:
    _distribution(tmp_path, "shadow_fl", "zstd = shadow_fl_never_imported", "foedus.pipeline_stage")
    done = _python(tmp_path, "import foedus\nfoedus.aggregators.create('fedavg')")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "ConfigError: pipeline stage 'zstd' is already registered: entry points of " in last
    assert "shadow_fl (shadow_fl_never_imported)" in last
    assert "foedus (foedus.compress.lossless)" in last


def test_entry_points_are_read_as_importlib_metadata_reads_them(tmp_path: Path) -> None:
    (tmp_path / "toy_fl.py").write_text(TOY)
    _distribution(tmp_path, "toy_fl", "[foedus.plugins]\ntoy = toy_fl\ntoy-again = toy_fl:Toy\n"
                                      "[other.group]\nignored = toy_fl\n"
                                      "[foedus.aggregator]\ntoy = toy_fl")
    code = ("from importlib.metadata import entry_points\n"
            "from foedus.plugins import plugin_entry_points\n"
            "ours = sorted((ep.group, ep.name, ep.value, ep.dist)\n"
            "              for ep in plugin_entry_points())\n"
            "every = entry_points()\n"
            "theirs = {(g, ep.name, ep.value, ep.dist.name) for g in every.groups\n"
            "          if g.startswith('foedus.') for ep in every.select(group=g)}\n"
            "print(set(ours) == theirs, len(ours) == len(theirs))\n"
            "print([row for row in ours if row[3] == 'toy_fl'])\n")
    done = _python(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True True", "[('foedus.aggregator', 'toy', 'toy_fl', 'toy_fl'), "
        "('foedus.plugins', 'toy', 'toy_fl', 'toy_fl'), "
        "('foedus.plugins', 'toy-again', 'toy_fl:Toy', 'toy_fl')]"]


def test_the_importlib_metadata_fallback_finds_the_same_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where only importlib.metadata can read the path (a zip archive, say), every foedus
    group is still read, to the same entry points."""
    import foedus.plugins

    def key(ep: foedus.plugins.PluginEntry) -> tuple[str, str, str]:
        return ep.group, ep.name, ep.value

    fast = sorted(map(key, foedus.plugins.plugin_entry_points()))
    monkeypatch.setattr(foedus.plugins, "_read_entry_points", lambda: None)
    slow = foedus.plugins.plugin_entry_points()
    assert sorted(map(key, slow)) == fast
    assert {"foedus.aggregator", "foedus.pipeline_stage"} <= {group for group, _, _ in fast}
    assert "foedus" in {ep.dist for ep in slow}
