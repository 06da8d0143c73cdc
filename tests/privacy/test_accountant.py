"""Accounting: epsilon is dp-accounting's for the round's event, grows with rounds, and the
budget refuses the round that would exceed it."""

from __future__ import annotations

import itertools
import re

import dp_accounting as dpa
import pytest
from dp_accounting.rdp import RdpAccountant

from foedus.core.errors import BudgetExhausted, ConfigError
from foedus.privacy.accountant import (
    PrivacyAccountant,
    SamplingSpec,
    calibrate_noise,
    epsilon_after,
)


def direct(event: object, relation: object = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE) -> float:
    accountant = RdpAccountant(neighboring_relation=relation)
    accountant.compose(event)
    return float(accountant.get_epsilon(1e-5))


def test_poisson_sampling_matches_the_library() -> None:
    ours = epsilon_after(50, noise_multiplier=1.1, delta=1e-5,
                         sampling=SamplingSpec(population=1000, clients_per_round=10))
    expected = direct(dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.1)), 50))
    assert ours == pytest.approx(expected, rel=1e-12)


def test_fixed_sampling_matches_the_library_under_replace_one() -> None:
    ours = epsilon_after(20, noise_multiplier=2.0, delta=1e-5, sampling=SamplingSpec(
        population=100, clients_per_round=10, sampling="fixed"))
    # replace-one adjacency: the sum's sensitivity is 2C, so the event's multiplier is z / 2
    expected = direct(dpa.SelfComposedDpEvent(dpa.SampledWithoutReplacementDpEvent(
        100, 10, dpa.GaussianDpEvent(1.0)), 20), dpa.NeighboringRelation.REPLACE_ONE)
    assert ours == pytest.approx(expected, rel=1e-12)


def test_full_participation_is_plain_gaussian_composition() -> None:
    ours = epsilon_after(10, noise_multiplier=1.0, delta=1e-5,
                         sampling=SamplingSpec(population=10, clients_per_round=10))
    assert ours == pytest.approx(direct(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 10)))


def test_epsilon_grows_with_rounds() -> None:
    acc = PrivacyAccountant(noise_multiplier=1.0, delta=1e-5,
                            sampling=SamplingSpec(population=100, clients_per_round=10))
    values = [acc.epsilon(r) for r in (0, 1, 5, 20, 80)]
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))


def test_budget_refuses_the_round_that_would_exceed_it() -> None:
    sampling = SamplingSpec(population=100, clients_per_round=10)
    acc = PrivacyAccountant(noise_multiplier=1.0, delta=1e-5, sampling=sampling, budget=2.0)
    allowed = acc.max_rounds()
    assert acc.epsilon(allowed) <= 2.0 < acc.epsilon(allowed + 1)
    for _ in range(allowed):
        acc.spend_round()
    with pytest.raises(BudgetExhausted, match=r"round 7 would bring epsilon to .* > budget 2.0"):
        acc.check_round(7)
    with pytest.raises(BudgetExhausted):
        acc.spend_round()
    assert acc.rounds == allowed, "a refused round is not spent"


def test_calibrated_noise_reaches_the_target_epsilon() -> None:
    sampling = SamplingSpec(population=100, clients_per_round=10)
    z = calibrate_noise(3.0, rounds=40, delta=1e-5, sampling=sampling)
    eps = epsilon_after(40, noise_multiplier=z, delta=1e-5, sampling=sampling)
    assert eps <= 3.0
    assert eps == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize("kwargs", [
    {"noise_multiplier": 0.0}, {"noise_multiplier": -1.0}, {"delta": 0.0}, {"delta": 1.0},
    {"budget": -1.0},
])
def test_invalid_accountant_settings_raise(kwargs: dict[str, float]) -> None:
    settings = {"noise_multiplier": 1.0, "delta": 1e-5, **kwargs}
    with pytest.raises(ConfigError):
        PrivacyAccountant(sampling=SamplingSpec(10, 10), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [
    {"population": 0, "clients_per_round": 1}, {"population": 5, "clients_per_round": 6},
    {"population": 5, "clients_per_round": 2, "sampling": "shuffled"},
])
def test_invalid_sampling_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SamplingSpec(**kwargs)  # type: ignore[arg-type]


def test_a_target_epsilon_no_noise_can_reach_is_refused_in_the_jobs_terms() -> None:
    """It quoted dp-accounting: "Unable to find bracketing interval within 2**30 of initial
    guess. Consider providing an ExplicitBracketInterval", advice for the library's caller."""
    with pytest.raises(ConfigError) as refused:
        calibrate_noise(1e9, rounds=5, delta=1e-5, sampling=SamplingSpec(10, 10))
    assert str(refused.value) == (
        "target_epsilon: dp-accounting found no noise_multiplier (searched from 0.001 up) "
        "that reaches epsilon 1e+09 at delta 1e-05 in 5 rounds; give noise_multiplier instead")


@pytest.mark.parametrize(("noise", "sampling"), [
    (1e300, SamplingSpec(10, 10)),
    (1e9, SamplingSpec(20, 10, "fixed")),
])
def test_noise_the_library_cannot_analyse_is_refused_by_check_analysable(
        noise: float, sampling: SamplingSpec) -> None:
    """It failed in round 1, inside the server's filter: "OverflowError: (34, 'Numerical
    result out of range')" (or a bare ValueError for fixed sampling)."""
    accountant = PrivacyAccountant(noise_multiplier=noise, delta=1e-5, sampling=sampling)
    with pytest.raises(ConfigError, match=r"^noise_multiplier: dp-accounting cannot analyse "
                                          rf"{re.escape(f'{noise:g}')} with this sampling"):
        accountant.check_analysable()
