"""Named plugins: how job files refer to aggregators, models, filters and transports.

Job files cross organisations, so they name *registered* plugins (``type: fedavg``) and never
dotted import paths: importing by path would let a job file execute arbitrary code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from foedus.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory table with errors that list the valid names and parameters."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@aggregators.register("fedavg")`` on a class or factory function."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names()) or 'none'}"
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
