"""Plugins are discovered, not listed: entry points, plus the operator's own modules.

A plugin is a module that registers aggregators, pipeline stages, models, datasets, transports
or topologies when it is imported. Installed packages declare theirs as entry points in the group
``foedus.plugins``; foedus declares its own modules the same way (``pyproject.toml``), so there is
one mechanism for both::

    [project.entry-points."foedus.plugins"]
    my-aggregators = "my_org.fl.aggregators"
    my-transport = "my_org.fl.transport"

Importing this module installs :func:`load_plugins` as the registries' loader
(:func:`foedus.core.registry.set_loader`), and ``import foedus`` imports it: the first time any
registry is asked for a name, every entry point's module is imported, so ``stages.create("zstd")``
works after a bare ``import foedus``. Each plugin module must import its optional dependencies
lazily (inside functions), so loading never requires an extra that a job does not use.

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
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from foedus.core.errors import ConfigError
from foedus.core.registry import Registry, set_loader

#: the environment variable naming the user's plugin modules, comma-separated
PLUGINS_ENV = "FOEDUS_PLUGINS"
#: the entry-point group plugin packages (foedus included) declare their modules in
ENTRY_POINT_GROUP = "foedus.plugins"

_loaded = False


def user_modules() -> list[str]:
    """The module names listed in ``FOEDUS_PLUGINS`` (empty entries ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def plugin_entry_points() -> list[EntryPoint]:
    """The ``foedus.plugins`` entry points of every installed distribution, each value once
    (a source checkout on ``sys.path`` next to its editable install shows them twice)."""
    seen: set[str] = set()
    unique: list[EntryPoint] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in seen:
            seen.add(ep.value)
            unique.append(ep)
    return unique


def _load_entry_point(ep: EntryPoint) -> None:
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    try:
        loaded = ep.load()
    except ImportError as exc:
        raise ConfigError(
            f"plugin {ep.name!r} of {dist} ({ep.value}) cannot be imported: {exc}"
        ) from exc
    if ep.attr is not None and callable(loaded):
        loaded()  # "module:register" names a function that registers when called


def load_plugins() -> None:
    """Import every entry point's module once, then the modules named in ``FOEDUS_PLUGINS``.

    Registries call this by themselves before their first lookup; call it directly only to
    pick up ``FOEDUS_PLUGINS`` changed since (imported modules are cached: repeating is cheap).
    """
    global _loaded
    if not _loaded:
        points = plugin_entry_points()
        if not any(ep.module.startswith("foedus.") for ep in points):
            raise ConfigError(
                f"no {ENTRY_POINT_GROUP!r} entry points of foedus itself were found: its "
                "package metadata is missing or stale; reinstall it (pip install -e .)")
        _loaded = True  # before importing: a module that looks a name up must not recurse
        try:
            for ep in points:
                _load_entry_point(ep)
        except BaseException:
            _loaded = False
            raise
    for module in user_modules():  # imported modules are cached, so this is cheap to repeat
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if exc.name is not None and module.startswith(exc.name):
                raise ConfigError(
                    f"{PLUGINS_ENV}: cannot import plugin module {module!r} ({exc}); is it on "
                    "the Python path?"
                ) from exc
            raise


set_loader(load_plugins)


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
