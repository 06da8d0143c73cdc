"""The aggregator contract: accumulate updates one by one, then produce the new global model.

``reset(global_params)`` opens a round, ``accept(update)`` takes one client's update or raises
:class:`~foedus.core.errors.RejectedUpdate` with a reason, ``result()`` returns the new global
parameters. ``snapshot()``/``restore()`` carry the state a restarted server needs (e.g. server
optimiser moments). Streaming aggregators hold O(model) memory however many clients report;
the others (median, Krum, ...) must see all updates at once and say so with ``streaming = False``.

An aggregator may hold accepted updates back and fold them in later (FedAvg folds them in
groups, which is faster); an update it then finds invalid is refused late: :meth:`settle`
returns those refusals, and the round collector calls it when the round closes to move them
from accepted to rejected in the round's record.

Writing an aggregator: the public methods above are what a server calls; a rule overrides
these documented hooks (all public, all on :class:`Aggregator`):

* :meth:`~Aggregator.clear_round`: clear per-round accumulators (``reset`` calls it);
* :meth:`~Aggregator.fold_params` or :meth:`~Aggregator.fold_vector`: fold in one validated
  update; ``fold_params`` sees the named arrays (so it can write each one straight into its own
  buffer, with no flattened copy), and its default flattens them and calls ``fold_vector``;
* :meth:`~Aggregator.result_vector` (required): the new global model as one flat vector;
* :meth:`~Aggregator.fold_pending`: only for rules that hold updates back, appending late
  refusals to :attr:`~Aggregator.late`;
* :meth:`~Aggregator.min_updates`, :meth:`~Aggregator.edge_result`,
  :meth:`~Aggregator.snapshot` / :meth:`~Aggregator.restore`, :meth:`~Aggregator.describe`.

A rule that overrides ``result`` or ``edge_result`` itself calls :meth:`~Aggregator.close_round`
first. :class:`foedus.aggregate.reference.ReferenceFedAvg` is the smallest complete example.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Message
from foedus.core.params import Params, ParamSpec, flatten, unflatten
from foedus.core.registry import Registry

log = logging.getLogger("foedus.aggregate")
#: an update refused after :meth:`Aggregator.accept` took it, with the reason
LateRejection = tuple[Message, RejectedUpdate]

# Elements per block when a pass over a vector is cut into cache-sized pieces (256 KiB of
# float32): small enough that temporaries stay in L2, large enough that the per-call overhead
# of numpy is negligible next to the memory traffic.
BLOCK = 1 << 16


class Aggregator(abc.ABC):
    """Base class; subclasses implement :meth:`fold_vector` (or :meth:`fold_params`) and
    :meth:`result_vector`, and override the other hooks the module docstring lists as needed.

    :attr:`late` holds the updates refused after :meth:`accept` took them, until
    :meth:`settle` hands them to the round collector.
    """

    streaming: ClassVar[bool] = True
    #: the kind of update it combines; a job pairs it only with a model whose
    #: :attr:`foedus.ModelAdapter.update_kind` is the same (a forest's histograms averaged as
    #: parameters would never grow the forest)
    update_kind: ClassVar[str] = "parameters"

    def __init__(self) -> None:
        self._spec: ParamSpec | None = None
        self._global_params: Params | None = None
        self._global: np.ndarray | None = None
        self._last_global: np.ndarray | None = None  # last round's copy, reused when it fits
        self.accepted = 0
        #: updates refused after accept() took them, with the reason (see settle())
        self.late: list[LateRejection] = []

    @property
    def spec(self) -> ParamSpec:
        if self._spec is None:
            raise ConfigError(f"{type(self).__name__}: call reset(global_params) first")
        return self._spec

    @property
    def global_vector(self) -> np.ndarray:
        """The round's global model as one float64 vector (built on first use: FedAvg never
        needs it, and for a large model the copy is a noticeable share of a round). It goes
        into last round's copy when the model kept its size: those pages are mapped already,
        and the copy never leaves the aggregator."""
        if self._global is None:
            if self._global_params is None:
                raise ConfigError(f"{type(self).__name__}: call reset(global_params) first")
            last, self._last_global = self._last_global, None
            fits = last is not None and last.shape == (self.spec.size,)
            self._global = flatten(self._global_params, out=last if fits else None)
        return self._global

    @property
    def work_dtype(self) -> np.dtype:  # type: ignore[type-arg]
        """The floating dtype buffers are kept in: the model's widest, at least float32.

        A float32 model is aggregated in float32 (half the memory traffic of float64, which is
        what bounds aggregation speed); a float64 model keeps float64.
        """
        dtype = np.result_type(np.float32, *self.spec.dtypes)
        return dtype if dtype.kind == "f" else np.dtype(np.float64)

    def min_updates(self) -> int:
        """How many accepted updates :meth:`result` needs (Krum and Bulyan need more than 1).

        A server can use it as a lower bound for its quorum.
        """
        return 1

    def reset(self, global_params: Params) -> None:
        """Start a round from the current global model."""
        self._spec = ParamSpec.of(global_params)
        self._global_params = global_params
        if self._global is not None:
            self._last_global, self._global = self._global, None
        self.accepted = 0
        self.late = []
        self.clear_round()

    def accept(self, update: Message) -> None:
        """Validate one update and fold it in; raises :class:`RejectedUpdate` with a reason.

        Nothing of a rejected update reaches the aggregate: every check runs before the fold.
        """
        self.validate(update)
        self.fold_params(update.params, update.num_examples)
        self.accepted += 1

    def validate(self, update: Message, *, finite: bool = True) -> None:
        """Raise :class:`RejectedUpdate` unless ``update`` has the model's names, shapes and
        dtypes, a positive example count and (with ``finite``) no NaN/Inf."""
        self.spec.check(update.params)
        if update.num_examples <= 0:
            raise RejectedUpdate("no_examples", f"{update.sender} reported {update.num_examples}")
        if finite:
            check_finite_blocked(update.params)

    def settle(self, *, final: bool = False) -> list[LateRejection]:
        """Fold in every update still held back and return the updates refused after
        :meth:`accept` had taken them (each with its reason; they are no longer counted in
        :attr:`accepted`). Rules that fold each update in at once never refuse late.

        ``final``: the round takes no more updates (the collector closed it), so the rule may
        fold the last ones straight into its result."""
        self.fold_pending(final=final)
        late, self.late = self.late, []
        return late

    def result(self) -> dict[str, np.ndarray]:
        """The new global parameters.

        Raises RejectedUpdate('no_updates') for an empty round and
        RejectedUpdate('too_few_updates') when fewer than :meth:`min_updates` arrived.
        """
        self.close_round()
        return unflatten(self.result_vector(), self.spec)

    def edge_result(self) -> dict[str, np.ndarray]:
        """What an edge of a hierarchical job sends its parent for this round: by default
        :meth:`result`. A rule whose result its parent cannot aggregate again overrides this:
        the server optimisers send the round's plain mean (the step is the root's to take, with
        the root's state), the federated forest its summed histograms (the root grows the
        forest). Raises like :meth:`result`."""
        return self.result()

    def close_round(self) -> None:
        """Fold in what is held back and refuse a round with too few updates; a rule that
        overrides :meth:`result` or :meth:`edge_result` calls it first."""
        self.fold_pending(final=True)
        if self.late:
            log.warning("%s refused %d update(s) after accepting them; call settle() to "
                        "record them", self.describe(), len(self.late))
        if self.accepted == 0:
            raise RejectedUpdate("no_updates", "no update was accepted this round")
        needed = self.min_updates()
        if self.accepted < needed:
            raise RejectedUpdate(
                "too_few_updates",
                f"{self.describe()} needs at least {needed} updates, got {self.accepted}",
            )

    def describe(self) -> str:
        """A short human-readable name with the settings, for error messages."""
        return type(self).__name__

    def snapshot(self) -> dict[str, Any]:
        """State that must survive a server restart (empty for stateless aggregators).

        Values are numpy arrays or plain JSON-like values (the checkpointer stores arrays as
        raw buffers and the rest as metadata).
        """
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`."""

    def clear_round(self) -> None:
        """Hook: clear per-round accumulators; :meth:`reset` calls it once the round's global
        model is set (so :attr:`spec` and :attr:`global_vector` are usable here)."""

    def fold_pending(self, *, final: bool = False) -> None:
        """Hook: fold in updates held back, appending any refused to ``self.late``
        (``final``: no more updates will come this round)."""

    def fold_params(self, params: Params, weight: int) -> None:
        """Hook: fold in one validated update. Default: flatten it, then :meth:`fold_vector`."""
        self.fold_vector(flatten(params), weight)

    def fold_vector(self, vector: np.ndarray, weight: int) -> None:
        """Hook: fold in one validated update as a float64 vector (the caller's own copy)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement fold_vector or fold_params"
        )

    @abc.abstractmethod
    def result_vector(self) -> np.ndarray:
        """Hook: the new global model as one flat vector in :attr:`spec`'s order; called by
        :meth:`result` after :meth:`close_round`, so at least :meth:`min_updates` arrived."""


def check_finite_blocked(params: Params) -> None:
    """Raise :class:`RejectedUpdate` if any floating-point value is NaN or infinite.

    Same verdict as :func:`foedus.core.params.check_finite`, but checks cache-sized blocks so
    the boolean temporary never leaves L2 (about twice as fast on large models) and stops at
    the first bad block.
    """
    for name, array in params.items():
        if array.dtype.kind not in "fc":
            continue
        flat = array.reshape(-1)
        for start in range(0, flat.size, BLOCK):
            if not np.isfinite(flat[start : start + BLOCK]).all():
                raise RejectedUpdate("not_finite", f"{name!r} contains NaN or Inf")


def positive_number(name: str, value: Any) -> float:
    """Validate a strictly positive real parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def fraction(name: str, value: Any, *, low: float, high: float, high_open: bool = True) -> float:
    """Validate a real parameter in ``[low, high)`` (or ``[low, high]``)."""
    ok = (
        not isinstance(value, bool) and isinstance(value, int | float)
        and low <= value and (value < high if high_open else value <= high)
    )
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{name}: expected a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def whole_number(name: str, value: Any, *, minimum: int) -> int:
    """Validate an integer parameter ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


aggregators: Registry[Aggregator] = Registry("aggregator")
