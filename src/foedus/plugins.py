"""Plugins are discovered, not listed: entry points, plus the operator's own modules.

A plugin is a module that registers aggregators, pipeline stages, models, datasets, transports
or topologies when it is imported. Installed packages declare theirs as entry points in the group
``foedus.plugins``; foedus declares its own modules the same way (``pyproject.toml``), so there is
one mechanism for both::

    [project.entry-points."foedus.plugins"]
    my-aggregators = "my_org.fl.aggregators"
    my-transport = "my_org.fl.transport"

Importing this module installs :func:`load_plugins` as the registries' loader and
:func:`find_plugin` as their finder (:mod:`foedus.core.registry`), and ``import foedus`` imports
it: the first time any registry is asked for a name, every other package's entry point module is
imported, and a lookup of a name not yet registered imports foedus's own module that registers
it (:data:`BUILTIN_PLUGINS` says which), or, for a name it does not list or for a listing of
every name, all of them. So ``stages.create("zstd")`` works after a bare ``import foedus``, and
every answer is the one a registry holding every plugin would give, but a job imports only the
plugin modules it uses: importing all of them took longer than a small job's first round. When
another package or ``FOEDUS_PLUGINS`` adds plugins, foedus's own modules are all imported with
them, so that a name registered twice is refused at once, as it always was. Each plugin module
must import its optional dependencies lazily (inside functions), so loading never requires an
extra that a job does not use.

Entry points are read from the ``entry_points.txt`` of each distribution on ``sys.path``, the
files :func:`importlib.metadata.entry_points` reads, without building a distribution (and
parsing its metadata) for each; an unusual path (a zip archive, a finder of distributions of its
own) falls back to :mod:`importlib.metadata`.

Modules that are not installed (a site's own dataset loader, say) are listed, comma-separated,
in the environment variable ``FOEDUS_PLUGINS`` (``FOEDUS_PLUGINS=my_data,my_org.models``). The
variable belongs to whoever runs the process, never to the job file: job files cross
organisations and must not choose code to import.

:func:`catalogue` lists everything registered, with the module that registered it and the extra
it needs (declared next to the plugin: a ``requires_extra`` attribute on its factory, or a
module-level ``REQUIRES_EXTRA``); :func:`format_catalogue` renders it for ``foedus plugins``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from foedus.core.errors import ConfigError
from foedus.core.registry import Registry, set_finder, set_loader

#: the environment variable naming the user's plugin modules, comma-separated
PLUGINS_ENV = "FOEDUS_PLUGINS"
#: the entry-point group plugin packages (foedus included) declare their modules in
ENTRY_POINT_GROUP = "foedus.plugins"

#: (kind, module, the names importing it registers) for each of foedus's own plugin modules, so
#: that a lookup imports one module, not every one. tests/test_plugins.py keeps it equal to the
#: catalogue; a name missing here is still found (by importing every plugin module), only slower.
BUILTIN_PLUGINS: tuple[tuple[str, str, str], ...] = (
    ("aggregator", "foedus.aggregate.fedavg", "fedavg"),
    ("aggregator", "foedus.aggregate.fedopt", "fedadagrad fedadam fedavgm fedyogi"),
    ("aggregator", "foedus.aggregate.robust",
     "bulyan geomedian krum median multi-krum trimmed-mean"),
    ("aggregator", "foedus.trees.bagging.aggregator", "tree-bagging"),
    ("aggregator", "foedus.trees.histforest.aggregator", "forest-histograms"),
    ("dataset", "foedus.data.datasets", "breast_cancer diabetes digits iris synthetic wine"),
    ("dataset", "foedus.data.files", "csv parquet"),
    ("model", "foedus.models.keras", "keras-mlp"),
    ("model", "foedus.models.sklearn",
     "sklearn-logistic sklearn-mlp sklearn-ridge sklearn-sgd sklearn-sgd-regressor"),
    ("model", "foedus.models.torch", "torch-mlp"),
    ("model", "foedus.trees.bagging.sklearn_adapter", "sklearn-extra-trees sklearn-random-forest"),
    ("model", "foedus.trees.bagging.xgboost_adapter", "xgboost-bagging"),
    ("model", "foedus.trees.histforest.adapter", "federated-forest"),
    ("pipeline stage", "foedus.compress.lossless", "lzma zstd"),
    ("pipeline stage", "foedus.compress.qsgd", "qsgd"),
    ("pipeline stage", "foedus.compress.sparsify", "topk"),
    ("pipeline stage", "foedus.privacy.dp", "central-dp clip local-dp"),
    ("pipeline stage", "foedus.privacy.secagg_pods", "secure-sum"),
    ("pipeline stage", "foedus.security.signing", "sign"),
    ("pipeline stage", "foedus.sim.attacks", "byzantine"),
    ("pipeline stage", "foedus.vertical.split_noise", "split-noise"),
    ("topology", "foedus.topology.asynchronous", "async"),
    ("topology", "foedus.topology.centralized", "centralized"),
    ("topology", "foedus.topology.hierarchical", "hierarchical"),
    ("topology", "foedus.topology.swarm", "swarm"),
    ("topology", "foedus.topology.vertical", "vertical"),
    ("transport", "foedus.transport.grpc", "grpc"),
    ("transport", "foedus.transport.https", "https"),
    ("transport", "foedus.transport.kafka", "kafka"),
    ("transport", "foedus.transport.local", "local"),
    ("transport", "foedus.transport.mqtt", "mqtt"),
)
_BUILTIN = {(kind, name): module for kind, module, names in BUILTIN_PLUGINS
            for name in names.split()}

_lock = threading.RLock()  # a registry may be asked from several threads at once
_entry_points: list[PluginEntry] | None = None  # read once per process
_others_loaded = False  # the other packages' entry points imported (and foedus's, if any)
_own_loaded = False  # every one of foedus's own entry points imported


@dataclass(frozen=True)
class PluginEntry:
    """One ``foedus.plugins`` entry point: its name, its value (``module`` or
    ``module:function``) and where it was declared (a dist-info or egg-info directory, or
    ``None`` when :mod:`importlib.metadata` found it)."""

    name: str
    value: str
    source: str | None = None
    distribution: str | None = None

    @property
    def module(self) -> str:
        return self.value.partition(":")[0].strip()

    @property
    def attr(self) -> str | None:
        attr = self.value.partition(":")[2].partition("[")[0].strip()
        return attr or None

    @property
    def dist(self) -> str:
        """The distribution's name, for messages: read from its metadata only when asked."""
        if self.distribution is not None:
            return self.distribution
        if self.source is not None:
            for metadata in ("METADATA", "PKG-INFO"):
                try:
                    with open(os.path.join(self.source, metadata), encoding="utf-8") as stream:
                        for line in stream:
                            if line.startswith("Name:"):
                                return line[5:].strip()
                            if not line.strip():
                                break
                except OSError:
                    continue
        return "an unknown distribution"


def user_modules() -> list[str]:
    """The module names listed in ``FOEDUS_PLUGINS`` (empty entries ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _normalized(name: str) -> str:
    """A distribution's name as :mod:`importlib.metadata` compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _group(text: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of the ``foedus.plugins`` section of an entry_points.txt."""
    found: list[tuple[str, str]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1].strip() == ENTRY_POINT_GROUP
        elif inside:
            name, _, value = line.partition("=")
            found.append((name.strip(), value.strip()))
    return found


def _read_entry_points() -> list[PluginEntry] | None:
    """Every distribution's ``foedus.plugins`` entry points, the first distribution of a name on
    ``sys.path`` only (as :mod:`importlib.metadata` does); ``None`` where the path holds what
    only :mod:`importlib.metadata` can read."""
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder
           for finder in sys.meta_path):
        return None
    seen: set[str] = set()
    found: list[PluginEntry] = []
    group = ENTRY_POINT_GROUP.encode()
    for entry in sys.path:
        if not isinstance(entry, str):
            return None
        try:
            children = os.scandir(entry or ".")
        except NotADirectoryError:
            return None  # a zip archive
        except OSError:
            continue
        with children:
            infos: list[str] = []  # a directory's dist-info first, as importlib.metadata does
            eggs: list[str] = []
            for found_entry in children:
                low = found_entry.name.lower()
                if low.endswith(".dist-info"):
                    infos.append(found_entry.name)
                elif low.endswith(".egg-info"):
                    eggs.append(found_entry.name)
        for child in sorted(infos) + sorted(eggs):
            distribution = _normalized(child.rpartition(".")[0].partition("-")[0])
            if distribution in seen:
                continue
            seen.add(distribution)
            source = f"{entry or '.'}{os.sep}{child}"
            try:
                with open(f"{source}{os.sep}entry_points.txt", "rb") as stream:
                    data = stream.read()
            except OSError:
                continue
            if group in data:
                found += [PluginEntry(name, value, source)
                          for name, value in _group(data.decode("utf-8"))]
    return found


def plugin_entry_points() -> list[PluginEntry]:
    """The ``foedus.plugins`` entry points of every installed distribution, each value once
    (a source checkout on ``sys.path`` next to its editable install shows them twice)."""
    points = _read_entry_points()
    if points is None:
        from importlib.metadata import entry_points

        points = [PluginEntry(ep.name, ep.value, None,
                              ep.dist.name if ep.dist is not None else None)
                  for ep in entry_points(group=ENTRY_POINT_GROUP)]
    seen: set[str] = set()
    unique: list[PluginEntry] = []
    for ep in points:
        if ep.value not in seen:
            seen.add(ep.value)
            unique.append(ep)
    return unique


def _own(ep: PluginEntry) -> bool:
    return ep.module.startswith("foedus.")


def _import(ep: PluginEntry) -> None:
    try:
        module = importlib.import_module(ep.module)
        loaded: Any = module
        for part in ep.attr.split(".") if ep.attr else ():
            loaded = getattr(loaded, part)
    except ImportError as exc:
        raise ConfigError(
            f"plugin {ep.name!r} of {ep.dist} ({ep.value}) cannot be imported: {exc}"
        ) from exc
    if ep.attr is not None and callable(loaded):
        loaded()  # "module:register" names a function that registers when called


def _points() -> list[PluginEntry]:
    global _entry_points
    if _entry_points is None:
        points = plugin_entry_points()
        if not any(_own(ep) for ep in points):
            raise ConfigError(
                f"no {ENTRY_POINT_GROUP!r} entry points of foedus itself were found: its "
                "package metadata is missing or stale; reinstall it (pip install -e .)")
        _entry_points = points
    return _entry_points


def _load_own() -> None:
    """Import every one of foedus's own entry points (once)."""
    global _own_loaded
    with _lock:
        if _own_loaded:
            return
        _own_loaded = True  # before importing: a module that looks a name up must not recurse
        try:
            for ep in _points():
                if _own(ep):
                    _import(ep)
        except BaseException:
            _own_loaded = False
            raise


def find_plugin(kind: str, name: str | None) -> None:
    """The registries' finder: import the module of foedus's own that registers ``name`` of
    ``kind`` (:data:`BUILTIN_PLUGINS`), or, with ``name`` ``None`` (a name nobody listed, or a
    listing of every name), every one of foedus's own plugin modules."""
    module = _BUILTIN.get((kind, name)) if name is not None else None
    if module is None:
        if name is None:
            _load_own()
        return
    if module in sys.modules:
        return
    declared = [ep for ep in _points() if ep.module == module]
    _import(declared[0] if declared else PluginEntry(module, module, distribution="foedus"))


def load_plugins(everything: bool = False) -> None:
    """Import, once, every other package's entry point module, then the modules named in
    ``FOEDUS_PLUGINS``; with ``everything`` (or when there are such modules), every one of
    foedus's own plugin modules too, as one who preloads before forking wants.

    Registries call this by themselves before their first lookup, and import foedus's own
    modules as lookups need them; call it directly to fail early on a broken plugin, to pick up
    ``FOEDUS_PLUGINS`` changed since (imported modules are cached: repeating is cheap), or with
    ``everything`` to import every plugin now.
    """
    global _others_loaded
    with _lock:
        if not _others_loaded:
            others = [ep for ep in _points() if not _own(ep)]
            _others_loaded = True  # before importing: a module that looks a name up must not
            try:                   # recurse
                if others or user_modules():
                    _load_own()  # a name registered twice is refused now, as it always was
                for ep in others:
                    _import(ep)
            except BaseException:
                _others_loaded = False
                raise
        if everything:
            _load_own()
        for module in user_modules():  # imported modules are cached: cheap to repeat
            try:
                importlib.import_module(module)
            except ImportError as exc:
                if exc.name is not None and module.startswith(exc.name):
                    raise ConfigError(
                        f"{PLUGINS_ENV}: cannot import plugin module {module!r} ({exc}); is it "
                        "on the Python path?"
                    ) from exc
                raise


set_loader(load_plugins)
set_finder(find_plugin)


# ---- what is installed --------------------------------------------------------------------------
@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: its kind (``aggregator``, ``pipeline stage``, ...), the name a
    job file uses, the module that defines it, and the extra it needs (``None``: none)."""

    kind: str
    name: str
    module: str
    extra: str | None


def _registries() -> list[Registry[Any]]:
    """Every registry, imported only here (so ``foedus.plugins`` stays light to import)."""
    from foedus.aggregate.base import aggregators
    from foedus.config.topology import topologies
    from foedus.core.filter import stages
    from foedus.data.datasets import datasets
    from foedus.models.base import models
    from foedus.transport.base import transports

    return [aggregators, stages, models, datasets, transports, topologies]


def extra_of(factory: Callable[..., Any]) -> str | None:
    """The extra a plugin needs, from declarations next to it: the factory's own
    ``requires_extra`` attribute if it has one (``None`` there means "nothing"), else the
    ``REQUIRES_EXTRA`` of the module that defines it, else ``None``."""
    if hasattr(factory, "requires_extra"):
        declared = factory.requires_extra
    else:
        module = sys.modules.get(getattr(factory, "__module__", "") or "")
        declared = getattr(module, "REQUIRES_EXTRA", None)
    return declared if isinstance(declared, str) else None


def catalogue() -> list[PluginInfo]:
    """Every registered plugin of every kind, sorted by kind then name."""
    load_plugins()
    rows = []
    for registry in _registries():
        for name in registry.names():
            factory = registry.get(name)
            rows.append(PluginInfo(
                kind=registry.kind, name=name,
                module=getattr(factory, "__module__", None) or "?",
                extra=extra_of(factory),
            ))
    return sorted(rows, key=lambda r: (r.kind, r.name))


def format_catalogue(rows: Iterable[PluginInfo]) -> str:
    """A plain-text table of ``rows`` (kind, name, extra to install, module), one line each;
    what ``foedus plugins`` prints."""
    table = [("KIND", "NAME", "EXTRA", "MODULE")] + [
        (r.kind, r.name, f"foedus[{r.extra}]" if r.extra else "-", r.module) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in table
    )
