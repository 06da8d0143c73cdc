"""Named plugins: how job files refer to aggregators, models, filters and transports.

Job files cross organisations, so they name *registered* plugins (``type: fedavg``) and never
dotted import paths: importing by path would let a job file execute arbitrary code.

Registries fill when plugin modules are imported. So that a registry is complete whenever
someone asks it for a name, however little of foedus they imported, every lookup
(:meth:`Registry.get`, :meth:`~Registry.names`, :meth:`~Registry.create`, ``in``) first runs a
*loader* once per process (:func:`set_loader` installs it), and a lookup of a name that is not
registered, or of every name, asks a *finder* (:func:`set_finder`) to import what registers it.
``foedus.plugins`` installs both: the loader imports the modules packages declare as a whole
(entry-point group ``foedus.plugins``), the finder the module an entry point declares for the
kind and name asked for (group ``foedus.<kind>``, named after :attr:`Registry.kind`), and only it
(importing every plugin module took longer than a small job's round); foedus declares its own
plugins that way.
This module imports nothing of foedus, so the kernel stays independent of what plugs into it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from foedus.core.errors import ConfigError

T = TypeVar("T")

_loader: Callable[[], None] | None = None
#: ``finder(kind, name)``: import what registers ``name`` of ``kind`` (``None``: every name)
_finder: Callable[[str, str | None], None] | None = None


def set_loader(loader: Callable[[], None] | None) -> None:
    """Install the function every registry runs, once, before its first lookup (or none)."""
    global _loader
    _loader = loader


def set_finder(finder: Callable[[str, str | None], None] | None) -> None:
    """Install the function a registry calls when asked for a name it does not hold, as
    ``finder(kind, name)``, and then, if the name is still missing, or when asked for every
    name, as ``finder(kind, None)``: it imports whatever may register them (or none)."""
    global _finder
    _finder = finder


def ensure_loaded() -> None:
    """Run the installed loader if it has not run yet.

    The loader is taken out before it runs, so a plugin module that looks a name up while it
    is being imported does not start the loading again; if the loader fails it is put back,
    and the next lookup raises the same error instead of answering from a partial registry.
    """
    global _loader
    loader, _loader = _loader, None
    if loader is None:
        return
    try:
        loader()
    except BaseException:
        _loader = loader
        raise


class Registry(Generic[T]):
    """A name -> factory table with errors that list the valid names and parameters."""

    def __init__(self, kind: str) -> None:
        #: what the registry holds, for messages (``unknown pipeline stage 'x'``), and the name
        #: the finder is given: plugins of this kind are declared in the entry-point group
        #: ``foedus.<kind>`` (spaces as underscores)
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        #: what to tell a user who names something that is not registered but is often looked
        #: for under that name (``fedprox`` is a model setting, not an aggregator)
        self.hints: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@aggregators.register("fedavg")`` on a class or factory function."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorate

    def _find(self, name: str | None) -> None:
        """Before a lookup of ``name`` (``None``: of every name): the loader, then the finder
        if the name is not registered yet, for that name first and then for every name."""
        ensure_loaded()
        finder = _finder
        if finder is None or (name is not None and name in self._factories):
            return
        if name is not None:
            finder(self.kind, name)
            if name in self._factories:
                return
        finder(self.kind, None)

    def names(self) -> list[str]:
        """Every registered name, sorted (plugins are loaded first)."""
        self._find(None)
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        self._find(name if isinstance(name, str) else None)
        return name in self._factories

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``, or a ConfigError listing the known names."""
        self._find(name)
        if name not in self._factories:
            hint = f" ({self.hints[name]})" if name in self.hints else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint}; allowed: "
                f"{', '.join(self.names()) or 'none'}"
            )
        return self._factories[name]

    def create(self, name: str, **params: Any) -> T:
        """Build a plugin, turning a wrong parameter name into a one-line ConfigError."""
        factory = self.get(name)
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # builtins without a signature: let the call decide
            signature = None
        if signature is not None and not any(
            p.kind is p.VAR_KEYWORD for p in signature.parameters.values()
        ):
            allowed = [
                p for p, spec in signature.parameters.items()
                if spec.kind in (spec.POSITIONAL_OR_KEYWORD, spec.KEYWORD_ONLY) and p != "self"
            ]
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                raise ConfigError(
                    f"{self.kind} {name!r} has no parameter {unknown[0]!r}; "
                    f"allowed: {', '.join(allowed) or 'none'}"
                )
        try:
            return factory(**params)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.kind} {name!r}: {exc}") from exc
