"""The client's copy of the global model a round started from, shared with its uplink filters.

Clients send full parameters, but clipping and noise act on the *update* ``params - global``.
A :class:`ModelTap` is the small object that lets an uplink filter see the model message the
client received: the client's downlink feeds it (:meth:`observe`), the filter reads it
(:meth:`base`). It keeps only the latest round's parameters (the client trains one round at a
time), and a filter asking for a round it did not see fails closed.

How the tap is fed, in order of preference:

1. the client pod offers a ``model_observers`` list (the kernel hook proposed in
   ``docs/privacy.md``): the tap appends :meth:`observe` to it;
2. otherwise, when the filter starts inside a graph, :meth:`attach` finds the pod upstream of the
   filter that has a ``model`` input (the client pod) and wraps that input's handler through the
   public ``Pod.handler`` / ``Pod.set_handler`` API so every model message passes by the tap
   first;
3. outside a graph (tests, custom roles), call :meth:`observe` yourself.
"""

from __future__ import annotations

import threading

import numpy as np

from foedus.core.errors import PrivacyError
from foedus.core.message import Kind, Message
from foedus.core.params import Params


class ModelTap:
    """Remembers the parameters of the last global model a client received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._round: int | None = None
        self._params: dict[str, np.ndarray] | None = None
        self._meta: dict[str, object] = {}
        self._attached_to: set[int] = set()

    def observe(self, msg: Message) -> None:
        """Record a model message (other kinds are ignored)."""
        if msg.kind is not Kind.MODEL:
            return
        with self._lock:
            self._round = msg.round
            self._params = {k: np.asarray(v) for k, v in msg.params.items()}
            self._meta = dict(msg.meta)

    def base(self, round: int) -> Params:
        """The global parameters of ``round``; raises :class:`PrivacyError` if not seen."""
        with self._lock:
            if self._params is None or self._round != round:
                seen = "no model yet" if self._round is None else f"round {self._round}"
                raise PrivacyError(
                    f"no global model recorded for round {round} (the tap saw {seen}): the "
                    "update cannot be clipped, so it is not sent. Feed the tap from the "
                    "client's downlink (ModelTap.observe) or run the filter in a client graph"
                )
            return self._params

    def meta(self, round: int) -> dict[str, object]:
        """Metadata of the model message of ``round`` (empty if that round was not seen)."""
        with self._lock:
            return dict(self._meta) if self._round == round else {}
