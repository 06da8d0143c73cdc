"""Pods: units of work with named input and output wires (the listener pattern).

A pod declares its wires; each input wire has a handler, by default the method ``on_<wire>``.
A handler receives one message and may ``emit`` results on output wires. Users extend a pod by
subclassing it, adding wires and assigning handlers; the runtime (``foedus.core.runtime``) feeds
the inputs and carries the outputs, so a pod never knows who is on the other end of a wire.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from foedus.core.errors import GraphError
from foedus.core.message import Message

if TYPE_CHECKING:
    from foedus.core.runtime import Runtime

Handler = Callable[[Message], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Wire:
    """A named port. ``type`` is checked when the graph is built; ``required`` inputs must be
    connected, and outputs that are not ``required`` may be left unconnected (their messages are
    then counted as discarded, never silently lost)."""

    name: str
    type: type = Message
    required: bool = True


class Pod:
    """Base class of every pod.

    Class attributes ``inputs`` and ``outputs`` list the wires every instance has; instances may
    add more with :meth:`add_input` / :meth:`add_output`. Set ``blocking = True`` for pods whose
    synchronous handlers do CPU-heavy work (training, aggregation): the runtime then runs them in a
    worker thread so the event loop keeps moving messages. Set ``daemon = True`` for pods whose
    ``run`` is an endless source (a link reading a topic): :meth:`Runtime.wait` does not wait for
    them, only for drivers that finish on their own. A daemon whose ``run`` fails ends the wait
    all the same: the drivers would wait forever for what it no longer reads.
    """

    inputs: ClassVar[tuple[Wire, ...]] = ()
    outputs: ClassVar[tuple[Wire, ...]] = ()
    blocking: ClassVar[bool] = False
    daemon: ClassVar[bool] = False

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__.lower()
        self._inputs: dict[str, Wire] = {w.name: w for w in type(self).inputs}
        self._outputs: dict[str, Wire] = {w.name: w for w in type(self).outputs}
        self._handlers: dict[str, Handler] = {}
        self._outbox: list[tuple[str, Message]] = []
        self._outbox_lock = threading.Lock()
        self._runtime: Runtime | None = None

    # ---- wires ---------------------------------------------------------------------------
    @property
    def input_wires(self) -> dict[str, Wire]:
        return dict(self._inputs)

    @property
    def output_wires(self) -> dict[str, Wire]:
        return dict(self._outputs)

    def add_input(
        self, name: str, handler: Handler | None = None, *, type: type = Message,
        required: bool = True,
    ) -> None:
        """Declare a new input wire, optionally with its handler (else ``on_<name>``)."""
        self._inputs[name] = Wire(name, type, required)
        if handler is not None:
            self._handlers[name] = handler

    def add_output(self, name: str, *, type: type = Message, required: bool = True) -> None:
        """Declare a new output wire."""
        self._outputs[name] = Wire(name, type, required)

    def set_handler(self, wire: str, handler: Handler) -> None:
        """Assign the handler of an existing input wire."""
        if wire not in self._inputs:
            raise GraphError(_unknown("input wire", wire, self._inputs, self.name))
        self._handlers[wire] = handler

    def handler(self, wire: str) -> Handler:
        """The handler for ``wire``: an assigned one, or the method ``on_<wire>``."""
        if wire in self._handlers:
            return self._handlers[wire]
        method = getattr(self, f"on_{wire}", None)
        if method is None:
            raise GraphError(
                f"pod {self.name!r} has input wire {wire!r} but no handler: "
                f"define on_{wire}() or call set_handler({wire!r}, fn)"
            )
        return method  # type: ignore[no-any-return]

    # ---- sending ---------------------------------------------------------------------------
    def emit(self, wire: str, msg: Message) -> None:
        """Send ``msg`` on output ``wire`` once the current handler returns.

        Safe to call from a worker thread (blocking pods). Delivery waits for room downstream, so
        a slow consumer slows its producer instead of filling memory (backpressure).
        """
        if wire not in self._outputs:
            raise GraphError(_unknown("output wire", wire, self._outputs, self.name))
        with self._outbox_lock:
            self._outbox.append((wire, msg))

    async def send(self, wire: str, msg: Message) -> None:
        """Deliver ``msg`` now and wait for room downstream; for async handlers and ``run``."""
        if wire not in self._outputs:
            raise GraphError(_unknown("output wire", wire, self._outputs, self.name))
        if self._runtime is None:
            raise GraphError(f"pod {self.name!r} is not running in a graph")
        await self._runtime.deliver(self, wire, msg)

    def take_outbox(self) -> list[tuple[str, Message]]:
        with self._outbox_lock:
            out, self._outbox = self._outbox, []
        return out

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Called once before any message arrives (open connections, subscribe)."""

    async def stop(self) -> None:
        """Called once on shutdown, after the pod's last handler has returned."""

    async def run(self) -> None:
        """Override to run a coroutine beside the handlers for the pod's whole life: sources (a
        link reading a topic) and drivers (the server's round loop) live here. The runtime starts
        it only when a subclass overrides it."""

    @property
    def has_run(self) -> bool:
        return type(self).run is not Pod.run

    def __or__(self, other: Pod) -> Pod:
        from foedus.core.filter import Chain, Filter

        if not isinstance(self, Filter) or not isinstance(other, Filter):
            raise GraphError("only filters chain with '|'; connect other pods in a Graph")
        return Chain(self, other)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, inputs={list(self._inputs)}, "
            f"outputs={list(self._outputs)})"
        )


def _unknown(what: str, name: str, valid: dict[str, Any], pod: str) -> str:
    choices = ", ".join(sorted(valid)) or "none"
    return f"pod {pod!r} has no {what} {name!r}; valid: {choices}"
