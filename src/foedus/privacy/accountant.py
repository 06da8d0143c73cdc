"""Privacy accounting: epsilon at a given delta after each round, and a budget that stops training.

The maths is Google's ``dp-accounting`` (RDP accountant); this module only describes a federated
round to it. One round is one Gaussian mechanism applied to the *sum of clipped client updates*
(noise multiplier ``z`` = noise std / L2 sensitivity), preceded by client sampling:

* ``sampling="poisson"``: each client takes part independently with probability ``q``
  (``PoissonSampledDpEvent``, add-or-remove-one-client adjacency, sensitivity ``C``);
* ``sampling="fixed"``: exactly ``clients_per_round`` of ``population`` clients, uniformly
  without replacement (``SampledWithoutReplacementDpEvent``). The library requires the
  replace-one-client adjacency for it, under which the sum's sensitivity is ``2C``, so the event is
  given ``z / 2``: the guarantee is stated for the adjacency the library can analyse.

``q = 1`` (every client every round) is plain composition of Gaussian mechanisms.

A :class:`PrivacyAccountant` counts the rounds *released* so far. :meth:`check_round` raises
:class:`~foedus.core.errors.BudgetExhausted` *before* a round that would push epsilon past the
budget, so the job stops with the model of the last affordable round and a message saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from foedus.core.errors import BudgetExhausted, ConfigError, require

Sampling = Literal["poisson", "fixed"]
#: the smallest noise multiplier :func:`calibrate_noise` tries
LOWEST_NOISE = 1e-3


@dataclass(frozen=True)
class SamplingSpec:
    """How clients are chosen each round; validated so a typo can never weaken accounting."""

    population: int
    clients_per_round: int
    sampling: Sampling = "poisson"

    def __post_init__(self) -> None:
        if self.sampling not in ("poisson", "fixed"):
            raise ConfigError(f"sampling: got {self.sampling!r}; allowed: poisson, fixed")
        if self.population < 1:
            raise ConfigError(f"population must be at least 1, got {self.population}")
        if not 1 <= self.clients_per_round <= self.population:
            raise ConfigError(
                f"clients_per_round must be between 1 and population={self.population}, "
                f"got {self.clients_per_round}"
            )

    @property
    def rate(self) -> float:
        return self.clients_per_round / self.population


def round_event(noise_multiplier: float, sampling: SamplingSpec) -> Any:
    """The ``dp_accounting`` event of one round (see the module docstring for the adjacency)."""
    dpa = require("dp_accounting", "privacy")
    if sampling.rate >= 1.0:
        return dpa.GaussianDpEvent(noise_multiplier)
    if sampling.sampling == "poisson":
        return dpa.PoissonSampledDpEvent(sampling.rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SampledWithoutReplacementDpEvent(
        sampling.population, sampling.clients_per_round,
        dpa.GaussianDpEvent(noise_multiplier / 2.0),
    )


def _fresh_accountant(sampling: SamplingSpec) -> Any:
    dpa = require("dp_accounting", "privacy")
    from dp_accounting.rdp import RdpAccountant

    relation = (
        dpa.NeighboringRelation.REPLACE_ONE
        if sampling.sampling == "fixed" and sampling.rate < 1.0
        else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    return RdpAccountant(neighboring_relation=relation)


@dataclass(frozen=True)
class Released:
    """Rounds a job released with one mechanism: a noise multiplier and a client sampling.

    A job resumed from its checkpoint with other settings (more noise, to stretch what is left
    of a budget) must still count its earlier rounds as they were noised: the checkpoint keeps
    these, and :func:`epsilon_of` composes them in order.
    """

    noise_multiplier: float
    sampling: SamplingSpec
    rounds: int

    def as_state(self) -> dict[str, Any]:
        """Plain values for a checkpoint (msgpack)."""
        s = self.sampling
        return {"noise_multiplier": self.noise_multiplier, "population": s.population,
                "clients_per_round": s.clients_per_round, "sampling": s.sampling,
                "rounds": self.rounds}

    @classmethod
    def from_state(cls, state: Any) -> Released:
        """What :meth:`as_state` wrote; anything else is a ``ConfigError`` (a damaged or
        foreign checkpoint must not be read as "nothing was spent")."""
        try:
            released = cls(float(state["noise_multiplier"]), SamplingSpec(
                int(state["population"]), int(state["clients_per_round"]), state["sampling"]),
                int(state["rounds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the checkpoint's record of released rounds is unreadable: "
                              f"{state!r}") from exc
        if released.rounds < 0 or not released.noise_multiplier > 0:
            raise ConfigError(f"the checkpoint's record of released rounds is invalid: {state!r}")
        return released


def _replace_one(sampling: SamplingSpec) -> bool:
    """Whether the accountant analyses ``sampling`` under replace-one adjacency."""
    return sampling.sampling == "fixed" and sampling.rate < 1.0


def epsilon_of(released: Sequence[Released], *, delta: float) -> float:
    """Epsilon at ``delta`` after the rounds of ``released``, composed in order (none: 0)."""
    released = [r for r in released if r.rounds > 0]
    if not released:
        return 0.0
    if any(r.noise_multiplier <= 0 for r in released):
        return math.inf
    if len({_replace_one(r.sampling) for r in released}) > 1:
        raise ConfigError(
            "rounds accounted under replace-one adjacency (sampling: fixed with population "
            "above clients_per_round) cannot be composed with rounds under add/remove-one; "
            "resume the job with the sampling its checkpoint was made with")
    dpa = require("dp_accounting", "privacy")
    accountant = _fresh_accountant(released[0].sampling)
    for r in released:
        accountant.compose(dpa.SelfComposedDpEvent(
            round_event(r.noise_multiplier, r.sampling), r.rounds))
    return float(accountant.get_epsilon(delta))


def epsilon_after(
    rounds: int, *, noise_multiplier: float, delta: float, sampling: SamplingSpec
) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds (0 rounds spend nothing)."""
    return epsilon_of([Released(noise_multiplier, sampling, rounds)], delta=delta)


def calibrate_noise(
    target_epsilon: float, *, rounds: int, delta: float, sampling: SamplingSpec
) -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` rounds is <= the target."""
    _check_epsilon_delta(target_epsilon, delta)
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1 to calibrate noise, got {rounds}")
    dpa = require("dp_accounting", "privacy")

    def make_event(z: float) -> Any:
        return dpa.SelfComposedDpEvent(round_event(z, sampling), rounds)

    try:
        z = dpa.calibrate_dp_mechanism(
            lambda: _fresh_accountant(sampling), make_event, target_epsilon, delta,
            dpa.LowerEndpointAndGuess(LOWEST_NOISE, 1.0),
        )
    except Exception as exc:  # the library raises plain errors when no z in range works
        # in the job's terms: its own words advise its caller (an ExplicitBracketInterval)
        raise ConfigError(
            f"target_epsilon: dp-accounting found no noise_multiplier (searched from "
            f"{LOWEST_NOISE:g} up) that reaches epsilon {target_epsilon:g} at delta {delta:g} "
            f"in {rounds} rounds; give noise_multiplier instead") from exc
    return float(z)


def _check_epsilon_delta(epsilon: float | None, delta: float) -> None:
    if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"epsilon must be a positive finite number, got {epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


class PrivacyAccountant:
    """Tracks the epsilon spent by a job, round by round, against an optional budget.

    ``noise_multiplier`` is the ratio of the noise std added to the sum of clipped updates to the
    clip norm. ``budget`` is the largest epsilon (at ``delta``) the job may reach; ``None`` means
    accounting without a limit.
    """

    def __init__(
        self, *, noise_multiplier: float, delta: float, sampling: SamplingSpec,
        budget: float | None = None,
    ) -> None:
        if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
            raise ConfigError(
                f"noise_multiplier must be a positive number, got {noise_multiplier}"
            )
        _check_epsilon_delta(budget, delta)
        require("dp_accounting", "privacy")  # fail at construction, not in round 1
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.sampling = sampling
        self.budget = budget
        self.rounds = 0
        #: rounds an earlier run of the job released, with their own mechanisms: the first
        #: ``sum(r.rounds)`` of :attr:`rounds` (see :meth:`restore`)
        self.earlier: tuple[Released, ...] = ()
        self._cache: dict[int, float] = {}

    def check_analysable(self) -> None:
        """Refuse, as a ``ConfigError``, a mechanism dp-accounting cannot analyse (a noise
        multiplier of 1e300, or 1e9 with fixed sampling): stages call this when they are built,
        so that it is not an ``OverflowError`` in round 1 inside the server's filter. Not done
        for every accountant: one costs milliseconds, and local DP builds one per client."""
        try:
            self.epsilon(1)
        except (OverflowError, ValueError) as exc:
            raise ConfigError(
                f"noise_multiplier: dp-accounting cannot analyse {self.noise_multiplier:g} with "
                f"this sampling ({type(exc).__name__}: {exc}); give a smaller noise_multiplier"
            ) from exc

    def released(self, rounds: int | None = None) -> list[Released]:
        """The mechanisms of the first ``rounds`` rounds (default: those spent), in order: the
        earlier runs' as they were, the rest with this accountant's."""
        left = self.rounds if rounds is None else rounds
        out: list[Released] = []
        for r in self.earlier:
            take = min(r.rounds, left)
            if take > 0:
                out.append(Released(r.noise_multiplier, r.sampling, take))
            left -= take
        if left > 0:
            out.append(Released(self.noise_multiplier, self.sampling, left))
        return out

    def restore(self, released: Sequence[Released]) -> None:
        """Take up the rounds an earlier run released (from its checkpoint): they count with
        the noise and sampling they had, whatever this run's settings."""
        epsilon_of([*released, Released(self.noise_multiplier, self.sampling, 1)],
                   delta=self.delta)  # refuses what cannot be composed, now
        self.earlier = tuple(released)
        self.rounds = sum(r.rounds for r in released)
        self._cache.clear()

    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (default: the rounds spent so far)."""
        n = self.rounds if rounds is None else rounds
        if n not in self._cache:
            self._cache[n] = epsilon_of(self.released(n), delta=self.delta)
        return self._cache[n]

    def check_round(self, round: int | None = None) -> None:
        """Raise :class:`BudgetExhausted` if spending one more round would exceed the budget."""
        if self.budget is None:
            return
        after = self.epsilon(self.rounds + 1)
        if after > self.budget:
            which = f"round {round}" if round is not None else "another round"
            raise BudgetExhausted(
                f"privacy budget exhausted: {which} would bring epsilon to {after:.3f} > budget "
                f"{self.budget} at delta={self.delta:g} (spent {self.epsilon():.3f} in "
                f"{self.rounds} rounds); training stops here"
            )

    def spend_round(self) -> float:
        """Record one released round (after :meth:`check_round`); returns the new epsilon."""
        self.check_round()
        self.rounds += 1
        return self.epsilon()

    def max_rounds(self, limit: int = 100_000) -> int:
        """How many rounds the budget allows in total (``limit`` when there is no budget)."""
        if self.budget is None:
            return limit
        lo, hi = 0, 1
        while hi < limit and self.epsilon(hi) <= self.budget:
            lo, hi = hi, hi * 2
        hi = min(hi, limit)
        while lo < hi:  # largest n with epsilon(n) <= budget, epsilon grows with n
            mid = (lo + hi + 1) // 2
            if self.epsilon(mid) <= self.budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def metrics(self) -> dict[str, float]:
        """What a round record should log."""
        return {"dp_epsilon": self.epsilon(), "dp_delta": self.delta,
                "dp_rounds": float(self.rounds)}
