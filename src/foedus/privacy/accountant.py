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


def epsilon_after(
    rounds: int, *, noise_multiplier: float, delta: float, sampling: SamplingSpec
) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds (0 rounds spend nothing)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    dpa = require("dp_accounting", "privacy")
    accountant = _fresh_accountant(sampling)
    accountant.compose(dpa.SelfComposedDpEvent(round_event(noise_multiplier, sampling), rounds))
    return float(accountant.get_epsilon(delta))


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
        self._cache: dict[int, float] = {}

    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (default: the rounds spent so far)."""
        n = self.rounds if rounds is None else rounds
        if n not in self._cache:
            self._cache[n] = epsilon_after(
                n, noise_multiplier=self.noise_multiplier, delta=self.delta,
                sampling=self.sampling,
            )
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
