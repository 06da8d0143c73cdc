"""The aggregator contract: accumulate updates one by one, then produce the new global model.

``reset(global_params)`` opens a round, ``accept(update)`` takes one client's update or raises
:class:`~foedus.core.errors.RejectedUpdate` with a reason, ``result()`` returns the new global
parameters. ``snapshot()``/``restore()`` carry the state a restarted server needs (e.g. server
optimiser moments). Streaming aggregators hold O(model) memory however many clients report;
the others (median, Krum, ...) must see all updates at once and say so with ``streaming = False``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Message
from foedus.core.params import Params, ParamSpec, check_finite, flatten, unflatten
from foedus.core.registry import Registry


class Aggregator(abc.ABC):
    """Base class; subclasses implement :meth:`_accept_vector` and :meth:`_result_vector`."""

    streaming: ClassVar[bool] = True

    def __init__(self) -> None:
        self._spec: ParamSpec | None = None
        self._global: np.ndarray | None = None
        self.accepted = 0

    @property
    def spec(self) -> ParamSpec:
        if self._spec is None:
            raise ConfigError(f"{type(self).__name__}: call reset(global_params) first")
        return self._spec

    @property
    def global_vector(self) -> np.ndarray:
        if self._global is None:
            raise ConfigError(f"{type(self).__name__}: call reset(global_params) first")
        return self._global

    def reset(self, global_params: Params) -> None:
        """Start a round from the current global model."""
        self._spec = ParamSpec.of(global_params)
        self._global = flatten(global_params)
        self.accepted = 0
        self._reset()

    def accept(self, update: Message) -> None:
        """Validate one update and fold it in; raises :class:`RejectedUpdate` with a reason."""
        self.spec.check(update.params)
        check_finite(update.params)
        if update.num_examples <= 0:
            raise RejectedUpdate("no_examples", f"{update.sender} reported {update.num_examples}")
        self._accept_vector(flatten(update.params), update.num_examples)
        self.accepted += 1

    def result(self) -> dict[str, np.ndarray]:
        """The new global parameters. Raises RejectedUpdate('no_updates') for an empty round."""
        if self.accepted == 0:
            raise RejectedUpdate("no_updates", "no update was accepted this round")
        return unflatten(self._result_vector(), self.spec)

    def snapshot(self) -> dict[str, Any]:
        """State that must survive a server restart (empty for stateless aggregators)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`."""

    def _reset(self) -> None:
        """Hook: clear per-round accumulators."""

    @abc.abstractmethod
    def _accept_vector(self, vector: np.ndarray, weight: int) -> None: ...

    @abc.abstractmethod
    def _result_vector(self) -> np.ndarray: ...


aggregators: Registry[Aggregator] = Registry("aggregator")
