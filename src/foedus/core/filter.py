"""Filters: the simplest pods, one message in and at most one out.

Clipping, noise, compression and quantisation are filters. They chain with ``|`` into a
:class:`Chain`, itself a filter, so ``Clip(1.0) | GaussianNoise(...) | Zstd()`` is one pod in a
graph. Each filter appends its ``tag`` to the message's trail, which lets the receiver check that
encoders were applied in the right order and decode them in reverse.

A filter that needs the round's global model (clipping a delta, encoding a difference) declares
an optional input wire named ``model`` (:data:`MODEL_WIRE`). Topologies connect it to the global
model stream: on a client, the downlink that feeds the client pod; on the server, the server's
``model`` output (a feedback edge); the simulation engine feeds it directly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from foedus.core.message import Message
from foedus.core.pod import Pod, Wire
from foedus.core.registry import Registry

MODEL_WIRE = "model"


def wants_model(pod: Pod) -> bool:
    """Whether ``pod`` declares the optional ``model`` input that tracks the global model."""
    return MODEL_WIRE in pod.input_wires


class Filter(Pod):
    """Override :meth:`process`; return ``None`` to drop a message on purpose (it is counted)."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)

    def process(self, msg: Message) -> Message | None:
        raise NotImplementedError(f"{type(self).__name__} must implement process()")

    def __call__(self, msg: Message) -> Message | None:
        """Apply the filter outside a graph, e.g. in tests or inside a role."""
        return self.process(msg)

    def on_in(self, msg: Message) -> None:
        out = self.process(msg)
        if out is not None:
            self.emit("out", out)


class Chain(Filter):
    """Filters applied one after another, as a single pod."""

    def __init__(self, *filters: Filter, name: str | None = None) -> None:
        flat: list[Filter] = []
        for f in filters:
            flat.extend(f.filters if isinstance(f, Chain) else [f])
        self.filters: tuple[Filter, ...] = tuple(flat)
        super().__init__(name or "|".join(f.name for f in self.filters))
        if any(wants_model(f) for f in self.filters):
            self.add_input(MODEL_WIRE, self._fan_out_model, required=False)

    def _fan_out_model(self, msg: Message) -> None:
        for f in self.filters:
            if wants_model(f):
                f.handler(MODEL_WIRE)(msg)

    @property
    def blocking(self) -> bool:  # type: ignore[override]
        return any(f.blocking for f in self.filters)

    def process(self, msg: Message) -> Message | None:
        current: Message | None = msg
        for f in self.filters:
            if current is None:
                return None
            current = f.process(current)
        return current


class Identity(Filter):
    """Passes messages through unchanged; a placeholder in recipes."""

    def process(self, msg: Message) -> Message:
        return msg


class Stage:
    """One step of a job's update pipeline, owning both of its halves.

    A stage gives the filter a client applies before sending (``client``) and, when the step must
    be undone or completed centrally, the filter the server applies on receipt (``server``). One
    object owns both halves, so an encoder can never be paired with the wrong decoder; the server
    applies its halves in reverse order, and each checks the message trail as it goes.
    """

    def client(self) -> Filter | None:
        return None

    def server(self) -> Filter | None:
        return None

    # Server-side round hooks; the runner registers them with the ServerPod.
    def before_round(self, round: int) -> None:
        """Called before round ``round`` starts; raise BudgetExhausted to end the job cleanly."""

    def after_round(self, record: Any) -> None:
        """Called with each finished RoundRecord (e.g. to add epsilon to its metrics)."""

    def model_meta(self, round: int) -> dict[str, Any]:
        """Extra metadata broadcast with round ``round``'s global model (e.g. a clip norm)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Server-side state a restarted server must get back (e.g. privacy budget spent);
        small and msgpack-able. Saved in every checkpoint."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state` returned, when the server resumes from a checkpoint."""


#: registered pipeline stages, by the name a job file uses (``type: zstd``)
stages: Registry[Stage] = Registry("pipeline stage")
