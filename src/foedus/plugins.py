"""Plugins are discovered, not listed: entry points, plus the operator's own modules.

A plugin is a module that registers aggregators, pipeline stages, models, datasets, transports
or topologies when it is imported. Installed packages declare theirs as entry points, and
foedus declares its own the same way (``pyproject.toml``), so there is one mechanism for both
and no other list of foedus's plugins. An entry point says what a module registers: in the group
``foedus.<kind>`` (:func:`entry_point_group`: the registry's kind, spaces as underscores), its name
is the name a job file uses and its value the module that registers it::

    [project.entry-points."foedus.aggregator"]
    my-median = "my_org.fl.aggregators"
    [project.entry-points."foedus.pipeline_stage"]
    my-noise = "my_org.fl.stages"

A module that registers several names is declared under each. Packages may instead declare a
module as a whole, under any name in the group ``foedus.plugins`` (what it registers unsaid)::

    [project.entry-points."foedus.plugins"]
    my-transport = "my_org.fl.transport"

Importing this module installs :func:`load_plugins` as the registries' loader and
:func:`find_plugin` as their finder (:mod:`foedus.core.registry`), and ``import foedus`` imports
it. At the first lookup of any registry, the entry points are read, and every ``foedus.plugins``
module is imported; a lookup of a name not yet registered imports the module declared for that
kind and name, and only it; a lookup of a name nobody declares, or a listing of every name,
imports every declared module. So ``stages.create("zstd")`` works after a bare ``import foedus``,
and every answer is the one a registry holding every plugin would give, but a job imports only
the plugin modules it uses: importing all of them took longer than a small job's first round.

A name registered twice is refused at the first lookup, as when every module was imported at
once: two entry points declaring one kind and name are refused from the declarations alone,
and when ``foedus.plugins`` modules or ``FOEDUS_PLUGINS`` add plugins, whose names nobody
declared, every declared module is imported before them. A module must register exactly what
its entry points declare (a name it registers undeclared is found only by importing everything;
tests/test_plugins.py holds foedus's own to it), and must import its optional dependencies
lazily (inside functions), so loading never requires an extra that a job does not use.

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
from dataclasses import dataclass, field
from typing import Any

from foedus.core.errors import ConfigError
from foedus.core.registry import Registry, set_finder, set_loader

#: the environment variable naming the user's plugin modules, comma-separated
PLUGINS_ENV = "FOEDUS_PLUGINS"
#: the entry-point group of modules imported whole at the first lookup, what they register unsaid
ENTRY_POINT_GROUP = "foedus.plugins"
#: what every entry-point group of foedus starts with (``foedus.plugins``, ``foedus.<kind>``)
GROUP_PREFIX = "foedus."


def entry_point_group(kind: str) -> str:
    """The entry-point group whose names are the plugins of ``kind`` a module registers: the
    registry's kind after ``foedus.``, spaces as underscores (``pipeline stage``:
    ``foedus.pipeline_stage``; a group is dotted identifiers), so the finder needs no table."""
    return GROUP_PREFIX + re.sub(r"\W+", "_", kind.strip())


_lock = threading.RLock()  # a registry may be asked from several threads at once
_index: _Index | None = None  # the entry points, read once per process
_others_loaded = False  # the ``foedus.plugins`` modules imported (and every declared one, if any)
_declared_loaded = False  # every module an entry point declares for a kind and name imported
_called: set[str] = set()  # the ``module:function`` entry points called (once each)


@dataclass(frozen=True)
class PluginEntry:
    """One foedus entry point: its name, its value (``module`` or ``module:function``), where
    it was declared (a dist-info or egg-info directory, or ``None`` when
    :mod:`importlib.metadata` found it) and its group (``foedus.plugins``, or
    ``foedus.<kind>`` when its name is the plugin the module registers)."""

    name: str
    value: str
    source: str | None = None
    distribution: str | None = None
    group: str = ENTRY_POINT_GROUP

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

    @property
    def declared(self) -> bool:
        """Whether the entry point says what its module registers (its group is a kind's)."""
        return self.group != ENTRY_POINT_GROUP


@dataclass
class _Index:
    """The entry points, sorted for the loader and the finder."""

    #: ``foedus.plugins`` entry points: modules imported whole, at the first lookup
    whole: list[PluginEntry] = field(default_factory=list)
    #: (group, name) -> the entry point declaring the module that registers that name
    declared: dict[tuple[str, str], PluginEntry] = field(default_factory=dict)


def user_modules() -> list[str]:
    """The module names listed in ``FOEDUS_PLUGINS`` (empty entries ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _normalized(name: str) -> str:
    """A distribution's name as :mod:`importlib.metadata` compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _groups(text: str) -> list[tuple[str, str, str]]:
    """The ``(group, name, value)`` lines of the ``foedus.*`` sections of an entry_points.txt."""
    found: list[tuple[str, str, str]] = []
    group: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            if not group.startswith(GROUP_PREFIX):
                group = None
        elif group is not None:
            name, _, value = line.partition("=")
            found.append((group, name.strip(), value.strip()))
    return found


def _read_entry_points() -> list[PluginEntry] | None:
    """Every distribution's foedus entry points, the first distribution of a name on
    ``sys.path`` only (as :mod:`importlib.metadata` does); ``None`` where the path holds what
    only :mod:`importlib.metadata` can read."""
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder
           for finder in sys.meta_path):
        return None
    seen: set[str] = set()
    found: list[PluginEntry] = []
    prefix = f"[{GROUP_PREFIX}".encode()
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
            if prefix in data:
                found += [PluginEntry(name, value, source, group=group)
                          for group, name, value in _groups(data.decode("utf-8"))]
    return found


def plugin_entry_points() -> list[PluginEntry]:
    """The entry points of every installed distribution in foedus's groups (``foedus.plugins``
    and ``foedus.<kind>``), each once (a source checkout on ``sys.path`` next to its editable
    install shows them twice)."""
    points = _read_entry_points()
    if points is None:
        from importlib.metadata import entry_points

        every = entry_points()
        points = [PluginEntry(ep.name, ep.value, None,
                              ep.dist.name if ep.dist is not None else None, group)
                  for group in sorted(every.groups) if group.startswith(GROUP_PREFIX)
                  for ep in every.select(group=group)]
    seen: set[tuple[str, str, str]] = set()
    unique: list[PluginEntry] = []
    for ep in points:
        key = (ep.group, ep.name, ep.value) if ep.declared else (ep.group, "", ep.value)
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return unique


def _own(ep: PluginEntry) -> bool:
    return ep.module.startswith("foedus.")


def _kind(group: str) -> str:
    """The kind a group declares plugins of, for messages (:func:`entry_point_group` undone)."""
    return group.removeprefix(GROUP_PREFIX).replace("_", " ")


def _import(ep: PluginEntry) -> None:
    """Import the entry point's module; call its function, if it names one, once."""
    try:
        module = importlib.import_module(ep.module)
        loaded: Any = module
        for part in ep.attr.split(".") if ep.attr else ():
            loaded = getattr(loaded, part)
    except ImportError as exc:
        kind = f"{_kind(ep.group)} " if ep.declared else ""
        raise ConfigError(
            f"plugin {kind}{ep.name!r} of {ep.dist} ({ep.value}) cannot be imported: {exc}"
        ) from exc
    if ep.attr is not None and callable(loaded):
        with _lock:  # "module:register" names a function that registers when called
            if ep.value in _called:
                return
            _called.add(ep.value)
        loaded()


def _entries() -> _Index:
    """The entry points, read once; a kind and name declared by two modules is refused."""
    global _index
    with _lock:
        if _index is not None:
            return _index
        index = _Index()
        for ep in plugin_entry_points():
            if not ep.declared:
                index.whole.append(ep)
                continue
            key = (ep.group, ep.name)
            first = index.declared.setdefault(key, ep)
            if first.value != ep.value:
                raise ConfigError(
                    f"{_kind(ep.group)} {ep.name!r} is already registered: entry points of "
                    f"{first.dist} ({first.value}) and {ep.dist} ({ep.value}) both declare it "
                    f"in {ep.group!r}")
        if not any(_own(ep) for ep in index.declared.values()):
            raise ConfigError(
                f"no {GROUP_PREFIX}<kind> entry points of foedus itself were found: its "
                "package metadata is missing or stale; reinstall it (pip install -e .)")
        _index = index
        return index


def _load_declared() -> None:
    """Import every module an entry point declares for a kind and name (once): foedus's own
    first, so that another package registering one of their names is the one refused."""
    global _declared_loaded
    with _lock:
        if _declared_loaded:
            return
        _declared_loaded = True  # before importing: a module that looks a name up must not
        try:                     # recurse
            points = list(_entries().declared.values())
            for ep in sorted(points, key=lambda ep: not _own(ep)):  # stable: as declared
                _import(ep)
        except BaseException:
            _declared_loaded = False
            raise


def find_plugin(kind: str, name: str | None) -> None:
    """The registries' finder: import the module an entry point declares for ``name`` of
    ``kind``, or, with ``name`` ``None`` (a name nobody declared, or a listing of every name),
    every module any entry point declares."""
    if name is None:
        _load_declared()
        return
    ep = _entries().declared.get((entry_point_group(kind), name))
    if ep is not None:
        _import(ep)


def load_plugins(everything: bool = False) -> None:
    """Import, once, every ``foedus.plugins`` entry point's module, then the modules named in
    ``FOEDUS_PLUGINS``; with ``everything`` (or when there are such modules), every module
    declared for a kind and name too, as one who preloads before forking wants.

    Registries call this by themselves before their first lookup, and import the declared
    modules as lookups need them; call it directly to fail early on a broken plugin, to pick up
    ``FOEDUS_PLUGINS`` changed since (imported modules are cached: repeating is cheap), or with
    ``everything`` to import every plugin now.
    """
    global _others_loaded
    with _lock:
        if not _others_loaded:
            whole = _entries().whole
            _others_loaded = True  # before importing: a module that looks a name up must not
            try:                   # recurse
                if whole or user_modules():
                    _load_declared()  # a name registered twice is refused now, as it always was
                for ep in whole:
                    _import(ep)
            except BaseException:
                _others_loaded = False
                raise
        if everything:
            _load_declared()
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
