"""Imports every module that registers plugins, so job files can name them.

Each listed module must import its optional dependencies lazily (inside functions), so loading
the registry never requires an extra that the job does not use.

Your own plugins (a dataset loader, a model, a stage) live in your own modules: list them,
comma-separated, in the environment variable ``FOEDUS_PLUGINS`` (``FOEDUS_PLUGINS=my_data,
my_org.models``) and they are imported before a job is built, so a job file can name what they
register. The variable belongs to whoever runs the process, never to the job file: job files
cross organisations and must not choose code to import.
"""

from __future__ import annotations

import importlib
import os

from foedus.core.errors import ConfigError

#: the environment variable naming the user's plugin modules, comma-separated
PLUGINS_ENV = "FOEDUS_PLUGINS"

PLUGIN_MODULES: tuple[str, ...] = (
    "foedus.aggregate",
    "foedus.models",
    "foedus.transport",
    "foedus.transport.grpc",
    "foedus.transport.https",
    "foedus.transport.mqtt",
    "foedus.transport.kafka",
    "foedus.models.keras",
    "foedus.models.trees",
    "foedus.models.boosters",
    "foedus.aggregate.trees",
    "foedus.models.histforest",
    "foedus.aggregate.histforest",
    "foedus.compress",
    "foedus.privacy.dp",
    "foedus.privacy.secagg_pods",
    "foedus.security.signing",
    "foedus.sim.attacks",
    "foedus.topology.centralized",
    "foedus.topology.hierarchical",
    "foedus.topology.swarm",
    "foedus.topology.asynchronous",
)

_loaded = False


def user_modules() -> list[str]:
    """The module names listed in ``FOEDUS_PLUGINS`` (empty entries ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def load_plugins() -> None:
    """Import all plugin modules once, then the user's modules named in ``FOEDUS_PLUGINS``."""
    global _loaded
    if not _loaded:
        for module in PLUGIN_MODULES:
            importlib.import_module(module)
        _loaded = True
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
