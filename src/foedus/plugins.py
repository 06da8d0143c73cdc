"""Imports every module that registers plugins, so job files can name them.

Each listed module must import its optional dependencies lazily (inside functions), so loading
the registry never requires an extra that the job does not use.
"""

from __future__ import annotations

import importlib

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
    "foedus.security.signing",
    "foedus.sim.attacks",
)

_loaded = False


def load_plugins() -> None:
    """Import all plugin modules once."""
    global _loaded
    if not _loaded:
        for module in PLUGIN_MODULES:
            importlib.import_module(module)
        _loaded = True
