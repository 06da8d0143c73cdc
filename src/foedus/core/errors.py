"""The one error tree of foedus.

Everything foedus raises on purpose derives from :class:`FoedusError`, so a user can catch the
whole framework with one ``except``. Inside a process errors are exceptions; across the network
they travel as values (``Message.error``) so one failing participant never brings down another.

::

    FoedusError
    ├── ConfigError          a job file or constructor argument is invalid
    ├── GraphError           pods and wires do not fit together (raised at build time)
    ├── CodecError           bytes from the wire are truncated, corrupted, oversized or malformed
    ├── TransportError       a transport failed to publish, subscribe or connect
    │   └── TransportClosed  the transport was used after close()
    ├── RejectedUpdate       an update was refused by a round (stale, wrong shape, NaN, ...)
    ├── PodError             a pod's handler raised; carries pod, wire and round
    ├── PrivacyError         a privacy filter is misconfigured or its trail is wrong
    │   └── BudgetExhausted  the privacy budget would be exceeded by another round
    └── MissingExtra         an optional integration is used but its extra is not installed
"""

from __future__ import annotations

from typing import Any


class FoedusError(Exception):
    """Root of every error foedus raises deliberately."""


class ConfigError(FoedusError, ValueError):
    """A job file, a registry lookup or a constructor argument is invalid."""


class GraphError(FoedusError):
    """Pods and wires do not fit: unknown names, wrong types, dangling inputs or cycles."""


class CodecError(FoedusError, ValueError):
    """Bytes received from the wire cannot be decoded into a message."""


class TransportError(FoedusError):
    """A transport could not publish, subscribe or connect."""


class TransportClosed(TransportError):
    """The transport was used after it was closed."""


class RejectedUpdate(FoedusError):
    """An update was refused; ``reason`` is a short machine-friendly tag used in counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PodError(FoedusError):
    """A handler failed. Records where, so a log line names the pod, the wire and the round."""

    def __init__(self, pod: str, wire: str, round: int | None, cause: BaseException) -> None:
        self.pod = pod
        self.wire = wire
        self.round = round
        self.cause = cause
        where = f"pod {pod!r}, wire {wire!r}" + (f", round {round}" if round is not None else "")
        super().__init__(f"{where}: {type(cause).__name__}: {cause}")


class PrivacyError(FoedusError):
    """A privacy mechanism is misconfigured, or its filters were applied in the wrong order."""


class BudgetExhausted(PrivacyError):
    """Running another round would spend more privacy budget than the job allows."""


class MissingExtra(FoedusError, ImportError):
    """An optional integration is used without its extra installed."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'foedus[{extra}]'"
        )


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise :class:`MissingExtra` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra, module) from exc
