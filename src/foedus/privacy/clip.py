"""L2 clipping of client updates, with a fixed or an adaptive (quantile-tracking) clip norm.

Clipping bounds how much one client can move the model: the update ``delta = params - global``
is scaled to L2 norm at most ``C``. That bound is the sensitivity every Gaussian mechanism in
:mod:`foedus.privacy.dp` is calibrated to, so clipping must happen before noise (the noise filter
checks the trail).

The adaptive norm follows Andrew et al., "Differentially Private Learning with Adaptive
Clipping" (NeurIPS 2021): each client reports one bit, "my update norm was at most C"; the
server adds Gaussian noise to the count of ones and moves C geometrically towards the target
quantile ``gamma`` of update norms: ``C <- C * exp(-eta * (noisy_fraction - gamma))``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import numpy as np

from foedus.core.errors import ConfigError, PrivacyError, RejectedUpdate
from foedus.core.filter import MODEL_WIRE, Filter
from foedus.core.message import Kind, Message
from foedus.core.params import ParamSpec, flatten, unflatten
from foedus.privacy.tap import ModelTap

log = logging.getLogger("foedus.privacy")

CLIP_TAG = "dp.clip"
#: meta keys a clipping filter sets (and the server halves remove before aggregation)
META_CLIP_NORM = "dp.clip_norm"
META_UNCLIPPED = "dp.unclipped"

NormSource = Callable[[int], float]  # round -> clip norm clients must use in that round

# ---- why a server-side privacy filter refuses an update (counted in the round's ``rejected``)
#: the update lacks the clipping (and noise) the job requires, or they were applied out of order
NOT_PRIVATE = "not_private"
#: the client says it clipped to another norm than the server's (the noise would be wrong)
WRONG_CLIP_NORM = "wrong_clip_norm"
#: adaptive clipping, and the client sent no clipping bit
NO_CLIP_BIT = "no_clip_bit"
#: the server's privacy budget cannot pay for noising the update
BUDGET_EXHAUSTED = "budget_exhausted"


class PrivacyRefusal(RejectedUpdate, PrivacyError):
    """A server-side privacy filter refuses one update. A :class:`RejectedUpdate`, so the
    runtime carries it to the aggregating pod, which counts it under its reason (one log line,
    the round goes on); a :class:`PrivacyError` too, for callers that catch those."""


def pop_private(msg: Message, *tags: str) -> Message:
    """``msg`` with ``tags`` undone, last applied first; refuses (``not_private``) an update
    whose trail does not end with them: it was not protected as the job requires."""
    for tag in tags:
        if not msg.trail or msg.trail[-1] != tag:
            last = repr(msg.trail[-1][:64]) if msg.trail else "nothing (no filter trail)"
            raise PrivacyRefusal(NOT_PRIVATE, f"cannot undo {tag!r}: the last filter applied "
                                              f"was {last}")
        msg = msg.replace(trail=msg.trail[:-1])
    return msg


def l2_clip(vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``vector`` to L2 norm at most ``clip_norm``; returns (clipped, original norm)."""
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        raise PrivacyError("the update contains NaN or Inf; it cannot be clipped")
    if norm > clip_norm:
        return vector * (clip_norm / norm), norm
    return vector, norm


def shown(value: object) -> str:
    """``value`` as a refusal quotes it; text that reads as a number also says why it is text.

    YAML 1.1 (PyYAML) reads a number with an exponent but no decimal point, ``1e-5``, as the
    string ``'1e-5'``: "got '1e-5'" alone reads as a number refused for being a number.
    """
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
        if "e" in value.lower() and "." not in value:  # 1e-5, 1E3 ("inf" has no e)
            return (f"{value!r} (text, not a number: YAML reads {value} as text; write it with "
                    "a decimal point, as in 1.0e-5)")
        return f"{value!r} (text, not a number: remove the quotes)"
    return repr(value)


def check_positive(name: str, value: object) -> float:
    """A finite, strictly positive float, else :class:`ConfigError` naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ConfigError(f"{name} must be a positive finite number, got {shown(value)}")
    return float(value)


class QuantileClipNorm:
    """The Andrew et al. (2021) estimator: a clip norm that tracks a quantile of update norms.

    Bits are recorded per round (:meth:`record`); :meth:`norm` for round ``r`` first folds in the
    bits of every earlier round, once, in order. Rounds are finalised lazily because the norm of
    round ``r`` is needed only when round ``r`` starts, after round ``r - 1``'s updates arrived.
    ``count_noise_std`` is the std of the Gaussian noise added to each round's count of ones
    (``sigma_b`` in the paper); 0 disables it (not private: use only for experiments).
    """

    def __init__(
        self, *, initial_norm: float = 1.0, target_quantile: float = 0.5,
        learning_rate: float = 0.2, count_noise_std: float = 0.0, seed: int | None = None,
    ) -> None:
        self.initial_norm = check_positive("initial_norm", initial_norm)
        if not 0 < target_quantile < 1:
            raise ConfigError(f"target_quantile must be in (0, 1), got {target_quantile!r}")
        self.target_quantile = float(target_quantile)
        self.learning_rate = check_positive("learning_rate", learning_rate)
        if not (math.isfinite(count_noise_std) and count_noise_std >= 0):
            raise ConfigError(f"count_noise_std must be >= 0, got {count_noise_std!r}")
        self.count_noise_std = float(count_noise_std)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._norms: dict[int, float] = {}
        self._bits: dict[int, list[bool]] = {}
        self._final_round = 0  # rounds <= this have their norm fixed
        self._current = self.initial_norm

    def update(self, bits: list[bool]) -> float:
        """One geometric step from a round's bits; returns the new norm."""
        if bits:
            count = sum(bits) + float(self._rng.normal(0.0, self.count_noise_std))
            fraction = count / len(bits)
            self._current *= math.exp(-self.learning_rate * (fraction - self.target_quantile))
        return self._current

    def record(self, round: int, unclipped: bool) -> None:
        """Fold in one client's bit for ``round`` (ignored, with a warning, if too late)."""
        with self._lock:
            if round < self._final_round:
                log.warning("clip bit for round %d arrived after the norm moved on", round)
                return
            self._bits.setdefault(round, []).append(bool(unclipped))

    def norm(self, round: int) -> float:
        """The clip norm of ``round``; fixed the first time it is asked for."""
        with self._lock:
            if round in self._norms:
                return self._norms[round]
            for r in sorted(k for k in self._bits if k < round):
                self.update(self._bits.pop(r))
            self._norms[round] = self._current
            self._final_round = max(self._final_round, round)
            return self._current


def fixed_norm(clip_norm: float) -> NormSource:
    """A norm source that always returns ``clip_norm``."""
    value = check_positive("clip_norm", clip_norm)
    return lambda _round: value


class ClipFilter(Filter):
    """Client half: clip ``params - global`` to the round's clip norm and send the clipped model.

    The output is still a full model (``global + clipped delta``) so every aggregator works
    unchanged. It also sets ``num_examples = 1`` (uniform weighting: a client's weight must not
    depend on its private data, or the sensitivity would too) and, unless ``keep_metrics``,
    drops the client's training metrics, which are computed on private data without noise.
    An update that cannot be clipped raises: it is never sent unclipped.
    """

    pushes = (CLIP_TAG,)

    def __init__(
        self, norm: NormSource | float, *, tap: ModelTap | None = None,
        keep_metrics: bool = False, report_bit: bool = False, name: str = "dp_clip",
    ) -> None:
        super().__init__(name)
        self.norm_source: NormSource = norm if callable(norm) else fixed_norm(norm)
        self.tap = tap or ModelTap()
        self.keep_metrics = keep_metrics
        self.report_bit = report_bit
        # the topology connects this to the global model stream (see foedus.core.filter)
        self.add_input(MODEL_WIRE, self.observe_model, required=False)

    def observe_model(self, msg: Message) -> None:
        """Show this filter the model message a round starts from."""
        self.tap.observe(msg)

    def process(self, msg: Message) -> Message:
        if msg.kind is not Kind.UPDATE:
            return msg  # errors and control carry no parameters
        base = self.tap.base(msg.round)
        broadcast = self.tap.meta(msg.round).get(META_CLIP_NORM)
        clip_norm = float(broadcast) if isinstance(broadcast, int | float) else (
            self.norm_source(msg.round)
        )
        check_positive("clip_norm", clip_norm)
        spec = ParamSpec.of(base)
        if tuple(msg.params) != spec.names:
            raise PrivacyError("the update's parameter names differ from the global model's")
        base_vector = flatten(base)
        clipped, norm = l2_clip(flatten(msg.params) - base_vector, clip_norm)
        meta = dict(msg.meta)
        meta[META_CLIP_NORM] = clip_norm
        if self.report_bit:
            meta[META_UNCLIPPED] = norm <= clip_norm
        return msg.replace(
            params=unflatten(base_vector + clipped, spec), num_examples=1,
            metrics=dict(msg.metrics) if self.keep_metrics else {}, meta=meta,
        ).push_trail(CLIP_TAG)


class ClipReceiver(Filter):
    """Server half of plain clipping: checks the trail and the norm the client says it used."""

    pops = (CLIP_TAG,)

    def __init__(self, norm: NormSource | float, *, name: str = "dp_clip_in") -> None:
        super().__init__(name)
        self.norm_source: NormSource = norm if callable(norm) else fixed_norm(norm)

    def process(self, msg: Message) -> Message:
        if msg.kind is not Kind.UPDATE:
            return msg
        msg = pop_private(msg, CLIP_TAG)
        check_client_norm(msg, self.norm_source(msg.round))
        return msg.replace(meta=strip_meta(msg.meta))


def check_client_norm(msg: Message, expected: float) -> float:
    """The clip norm a client used must be the server's, or the noise calibration is wrong;
    refuses the update (``wrong_clip_norm``) otherwise."""
    used = msg.meta.get(META_CLIP_NORM)
    if isinstance(used, bool) or not isinstance(used, int | float) \
            or not math.isclose(float(used), expected, rel_tol=1e-9):
        shown = repr(used) if isinstance(used, int | float) else f"a {type(used).__name__}"
        raise PrivacyRefusal(
            WRONG_CLIP_NORM,
            f"round {msg.round} was clipped to {shown}, the server expects {expected}")
    return expected


def strip_meta(meta: object) -> dict[str, object]:
    """Metadata without the privacy filters' own keys."""
    assert isinstance(meta, dict) or hasattr(meta, "items")
    return {k: v for k, v in meta.items() if not str(k).startswith("dp.")}  # type: ignore[attr-defined]
