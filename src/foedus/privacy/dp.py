"""The Gaussian mechanism in both placements, as filters and as job-file pipeline stages.

* **Local DP** (``local-dp``): every client clips its update to ``C`` and adds ``N(0, (z C)^2)``
  before sending. Nobody, not even the server, has to be trusted; each client's own accountant
  stops it from sending once its budget is spent. Noise is large: every update carries it.
* **Central DP** (``central-dp``, DP-FedAvg, McMahan et al. 2018): clients only clip; the trusted
  server adds noise calibrated to the *sum* of clipped updates, std ``z C``. The server half adds
  ``N(0, (z C)^2 / m)`` to each of the ``m = clients_per_round`` updates, so the sum of ``m``
  updates carries exactly ``N(0, (z C)^2)`` (more if more arrive). The server's accountant
  refuses a round that would exceed the budget (:class:`~foedus.core.errors.BudgetExhausted`).

Both take ``noise_multiplier`` or ``target_epsilon`` (+ ``rounds``, ``delta``): the noise is then
calibrated with ``dp-accounting`` so that ``rounds`` rounds reach the target. Every setting is
checked when the stage is built; any failure inside a filter drops the update, never sends it
unprotected. See ``docs/privacy.md`` for the threat model and the kernel hooks.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import BudgetExhausted, ConfigError, PrivacyError
from foedus.core.filter import CLIP, NOISE, Chain, Filter, Half, RoundPlan, Stage, stages
from foedus.core.message import Kind, Message
from foedus.core.params import ParamSpec, flatten, unflatten
from foedus.privacy.accountant import (
    PrivacyAccountant,
    Released,
    SamplingSpec,
    calibrate_noise,
)
from foedus.privacy.clip import (
    BUDGET_EXHAUSTED,
    CLIP_TAG,
    META_CLIP_NORM,
    META_UNCLIPPED,
    NO_CLIP_BIT,
    ClipFilter,
    ClipReceiver,
    NormSource,
    PrivacyRefusal,
    QuantileClipNorm,
    check_client_norm,
    check_positive,
    fixed_norm,
    pop_private,
    shown,
    strip_meta,
)

NOISE_TAG = "dp.gaussian"
#: what this module's stages need installed (``foedus plugins`` shows it): the accountant's
#: dp-accounting; ClipStage, which has no accountant, declares that it needs nothing
REQUIRES_EXTRA = "privacy"


log = logging.getLogger("foedus.privacy.dp")


def add_gaussian(msg: Message, std: float, rng: np.random.Generator) -> Message:
    """``msg`` with i.i.d. ``N(0, std^2)`` added to every parameter (computed in float64)."""
    spec = ParamSpec.of(msg.params)
    vector = flatten(msg.params)
    vector += rng.normal(0.0, std, size=vector.shape)
    return msg.replace(params=unflatten(vector, spec))


class GaussianNoise(Filter):
    """Client half of local DP: adds ``N(0, (z C)^2)`` to an update that was clipped to ``C``.

    Refuses (raises) an update whose last filter was not clipping: noise calibrated to a norm
    the update does not have protects nothing; and a second update of a round it already
    noised, which would be a release nobody accounts. With an ``accountant`` it also refuses a
    round that would exceed the client's own budget.
    """

    pushes = (NOISE_TAG,)

    def __init__(
        self, noise_multiplier: float, *, accountant: PrivacyAccountant | None = None,
        seed: int | None = None, name: str = "dp_noise",
    ) -> None:
        super().__init__(name)
        self.noise_multiplier = check_positive("noise_multiplier", noise_multiplier)
        self.accountant = accountant
        self._rng = np.random.default_rng(seed)
        self._rounds: set[int] = set()

    def process(self, msg: Message) -> Message:
        if msg.kind is not Kind.UPDATE:
            return msg
        if not msg.trail or msg.trail[-1] != CLIP_TAG:
            raise PrivacyError(
                "Gaussian noise needs a clipped update (the last filter must be "
                f"{CLIP_TAG!r}, got {list(msg.trail)}): put clipping before noise"
            )
        clip_norm = check_positive("clip_norm", msg.meta.get(META_CLIP_NORM))
        if msg.round in self._rounds:
            # the same round's model delivered again (a retained broadcast after a reconnect):
            # fresh noise would be a second release that the round's single charge, here and
            # at the server, does not count; the server refuses a second answer anyway
            raise PrivacyError(
                f"round {msg.round} was already released with its own noise; a second noised "
                "update of the round would spend privacy budget that is not accounted")
        if self.accountant is not None:
            self.accountant.spend_round()  # raises BudgetExhausted: nothing is sent
        self._rounds.add(msg.round)
        return add_gaussian(msg, self.noise_multiplier * clip_norm, self._rng).push_trail(
            NOISE_TAG
        )


class LocalDPReceiver(Filter):
    """Server half of local DP: checks that clipping then noise were applied, in that order.

    An update that fails a check is refused with a :class:`~foedus.privacy.clip.PrivacyRefusal`
    (``not_private``, ``wrong_clip_norm``), which the server counts in the round's ``rejected``.
    """

    pops = (NOISE_TAG, CLIP_TAG)

    def __init__(self, norm: NormSource, *, rounds_seen: set[int] | None = None,
                 name: str = "dp_local_in") -> None:
        super().__init__(name)
        self.norm_source = norm
        self.rounds_seen = rounds_seen if rounds_seen is not None else set()

    def process(self, msg: Message) -> Message:
        if msg.kind is not Kind.UPDATE:
            return msg
        msg = pop_private(msg, NOISE_TAG, CLIP_TAG)
        check_client_norm(msg, self.norm_source(msg.round))
        self.rounds_seen.add(msg.round)
        return msg.replace(meta=strip_meta(msg.meta))


class CentralNoise(Filter):
    """Server half of central DP: per-round budget check, then its share of the sum's noise.

    Each accepted update gets ``N(0, (z_delta C)^2 / m)``; ``m`` updates sum to noise of std
    ``z_delta C``. With adaptive clipping, the clients' bits are counted here, and ``z_delta``
    is the part of the total noise multiplier left after the count's noise (Andrew et al.).
    An update that fails a check, or that the budget cannot pay for, is refused with a
    :class:`~foedus.privacy.clip.PrivacyRefusal` (``not_private``, ``wrong_clip_norm``,
    ``no_clip_bit``, ``budget_exhausted``): counted by the server, never aggregated un-noised.
    """

    pops = (CLIP_TAG,)

    def __init__(
        self, *, norm: NormSource, noise_multiplier: float, clients_per_round: int,
        accountant: PrivacyAccountant, estimator: QuantileClipNorm | None = None,
        seed: int | None = None, name: str = "dp_central_in",
    ) -> None:
        super().__init__(name)
        self.norm_source = norm
        self.noise_multiplier = check_positive("noise_multiplier", noise_multiplier)
        if clients_per_round < 1:
            raise ConfigError(f"clients_per_round must be at least 1, got {clients_per_round}")
        self.clients_per_round = clients_per_round
        self.accountant = accountant
        self.estimator = estimator
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.rounds_spent: set[int] = set()

    def spend(self, round: int) -> None:
        """Charge ``round`` to the accountant once; raises :class:`BudgetExhausted`."""
        with self._lock:
            if round in self.rounds_spent:
                return
            self.accountant.check_round(round)
            self.accountant.spend_round()
            self.rounds_spent.add(round)

    def process(self, msg: Message) -> Message:
        if msg.kind is not Kind.UPDATE:
            return msg
        msg = pop_private(msg, CLIP_TAG)
        clip_norm = check_client_norm(msg, self.norm_source(msg.round))
        bit = msg.meta.get(META_UNCLIPPED)
        if self.estimator is not None and not isinstance(bit, bool):
            raise PrivacyRefusal(NO_CLIP_BIT, "no clipping bit for adaptive clipping")
        try:
            self.spend(msg.round)
        except BudgetExhausted as exc:
            raise PrivacyRefusal(BUDGET_EXHAUSTED, str(exc)) from exc
        if self.estimator is not None:
            self.estimator.record(msg.round, bool(bit))
        std = self.noise_multiplier * clip_norm / math.sqrt(self.clients_per_round)
        return add_gaussian(msg.replace(meta=strip_meta(msg.meta)), std, self._rng)


# ---- pipeline stages ------------------------------------------------------------------------
def _noise_multiplier(
    noise_multiplier: float | None, target_epsilon: float | None, rounds: int | None,
    delta: float, sampling: SamplingSpec,
) -> float:
    if noise_multiplier is not None and target_epsilon is not None:
        raise ConfigError(
            "give noise_multiplier or target_epsilon, not both: noise_multiplier sets the noise, "
            "target_epsilon (with rounds) calibrates it; with both, one would be ignored")
    if noise_multiplier is None and target_epsilon is None:
        raise ConfigError("give exactly one of noise_multiplier (the noise) and target_epsilon "
                          "(with rounds: the noise calibrated to reach it)")
    if noise_multiplier is not None:
        z = check_positive("noise_multiplier", noise_multiplier)
        if rounds is not None:  # it calibrates nothing here: refused rather than ignored
            raise ConfigError(
                "rounds: only used with target_epsilon (the rounds its noise is calibrated "
                f"for); noise_multiplier {z:g} is used as given and rounds would be ignored: "
                "remove rounds (the job's length is its top-level rounds:, a budget stops it "
                "early), or give target_epsilon instead of noise_multiplier")
        return z
    if rounds is None:
        raise ConfigError("target_epsilon needs rounds: the number of rounds to calibrate for")
    return calibrate_noise(
        check_positive("target_epsilon", target_epsilon), rounds=rounds, delta=delta,
        sampling=sampling,
    )


def _check_settings(*, rounds: Any = None, delta: Any = 1e-5, budget: Any = None,
                    population: Any = None, seed: Any = None) -> None:
    """Types and ranges of the stages' accounting settings, one ``ConfigError`` naming the
    key: a string (``delta: "1e-5"``, ``rounds: "50"``) used to surface as "'<' not supported
    between instances of 'str' and 'int'", and a string ``seed`` as a failure to build the
    clients."""
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value: Any) -> bool:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))

    if rounds is not None and not (integer(rounds) and rounds >= 1):
        raise ConfigError(f"rounds: expected an integer >= 1, got {shown(rounds)}")
    if not (number(delta) and 0 < delta < 1):
        raise ConfigError(f"delta: expected a number in (0, 1), got {shown(delta)}")
    if budget is not None and not (number(budget) and budget > 0):
        raise ConfigError(f"budget: expected a number > 0 (epsilon), got {shown(budget)}")
    if population is not None and not (integer(population) and population >= 1):
        raise ConfigError(f"population: expected an integer >= 1, got {shown(population)}")
    if seed is not None and not (integer(seed) and seed >= 0):
        raise ConfigError(f"seed: expected an integer >= 0, got {shown(seed)}")


#: the delta recommended is at most this fraction of 1/n (n: the clients a stage protects)
DELTA_HEADROOM = 10


def check_delta(delta: float, clients: int, kind: str, where: str) -> None:
    """Refuse a ``delta`` that is not below ``1/n`` for the ``n`` clients a stage protects.

    Publishing one uniformly chosen client's data outright is ``(0, 1/n)``-DP, so a guarantee
    with ``delta >= 1/n`` rules nothing out (``delta: 0.5`` used to be accepted without
    comment). The refusal recommends ``delta <= 1/(10 n)``; ``1e-5`` is the default."""
    bound = 1.0 / clients
    if delta >= bound:
        raise ConfigError(
            f"delta: {delta:g} is not below 1/n = {bound:.4g} for the n = {clients} clients "
            f"{kind} protects ({where}): such a delta allows publishing one client's data "
            f"outright; use a delta far below 1/n, at most 1/({DELTA_HEADROOM} n) = "
            f"{bound / DELTA_HEADROOM:.4g} (e.g. 1.0e-5)")


def _check_budget_pays_a_round(accountant: PrivacyAccountant) -> None:
    """Refuse noise the accountant cannot analyse, and a budget too small for even one round,
    when the stage is built.

    Such a job used to start, train nothing (the server stops before round 1), and end with
    exit status 0 and the initial model, after its clients had waited for a round that never
    came. Nothing can ever be trained with it, so it is a setting error, reported as one."""
    accountant.check_analysable()
    if accountant.budget is None:
        return
    one_round = accountant.epsilon(1)
    if one_round > accountant.budget:
        raise ConfigError(
            f"budget: {accountant.budget:g} cannot pay a single round: one round spends epsilon "
            f"{one_round:.4g} at delta={accountant.delta:g} with noise_multiplier "
            f"{accountant.noise_multiplier:.4g}; raise budget or noise_multiplier (or give "
            "target_epsilon with rounds, which calibrates the noise to the budget)")


#: what a required setting is, for the refusal of a job that leaves it out
_REQUIRED = {
    "clip_norm": "the L2 norm every update is clipped to (e.g. clip_norm: 1.0)",
    "clients_per_round": "the updates a round sums, which the noise is split over (at most "
                         "clients.min_clients)",
}


def _required(name: str, value: Any) -> Any:
    """``value``, or a refusal saying what the missing setting means: Python's own words were
    "LocalDPStage.__init__() missing 1 required positional argument: 'clip_norm'"."""
    if value is None:
        raise ConfigError(f"{name}: required: {_REQUIRED[name]}")
    return value


def _check_parameters(kind: str, plan: RoundPlan) -> None:
    """Clipping and noise work on a vector of model parameters: a forest's histograms or a
    bagged ensemble's trees, clipped, were refused by their aggregator or never sent, and the
    job ended ``no_quorum`` after all its rounds."""
    if plan.update_kind != "parameters":
        raise ConfigError(
            f"{kind} works on model parameter updates, but aggregator {plan.aggregator!r} "
            f"combines {plan.update_kind}, which clipping would break; remove {kind} or use a "
            "model that sends parameters")


def _adaptive_number(adaptive: dict[str, Any], key: str, default: float, expected: str,
                     valid: Callable[[float], bool]) -> float:
    """One adaptive-clipping setting, checked as a number: ``float()`` used to read the string
    ``"0.5"`` and ``true`` as numbers, and to fail on ``"x"`` without naming the key."""
    value = adaptive.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not valid(value)):
        raise ConfigError(f"adaptive.{key}: expected a number {expected}, got {shown(value)}")
    return float(value)


class _DPStage(Stage):
    """Shared plumbing: the server-side accountant and the round hooks."""

    accountant: PrivacyAccountant
    #: the job-file name of the stage, for what it logs
    kind: ClassVar[str]
    seed: int | None = None
    _said_seeded = False

    def before_round(self, round: int) -> None:
        """Server hook: raise :class:`BudgetExhausted` before a round the budget cannot pay."""
        self.say_if_seeded()
        self.accountant.check_round(round)

    def say_if_seeded(self) -> None:
        """Say once, at error level, that a seeded stage's noise can be removed.

        The noise comes from a generator seeded with ``seed`` (local DP: ``seed`` + the client's
        index), so anyone holding the job file draws the same noise; the sum of a round's draws
        does not even depend on which update got which. Subtracting it leaves the un-noised
        update or sum, and the epsilon reported protects nothing. Useful for tests, so allowed,
        but never silent.
        """
        if self.seed is None or self._said_seeded:
            return
        self._said_seeded = True
        log.error(
            "%s: seed %s makes the noise reproducible by anyone holding the job file, who can "
            "subtract it: the epsilon reported does not hold; leave seed out outside tests "
            "(without it the noise is seeded from OS entropy)", self.kind, self.seed)

    def after_round(self, record: Any) -> None:
        """Server hook (a ``ServerPod.round_listeners`` entry): log epsilon with the round."""
        self.sync_rounds()
        record.metrics.update(self.accountant.metrics())

    def sync_rounds(self) -> None:
        """Bring the accountant up to the rounds the server half has seen."""

    @property
    def epsilon(self) -> float:
        self.sync_rounds()
        return self.accountant.epsilon()

    def state(self) -> dict[str, Any]:
        """The rounds already paid for, with the noise and sampling each had: a resumed server
        must not report a fresh budget, nor recount them with its own (other) settings."""
        self.sync_rounds()
        return {"rounds": self.accountant.rounds, "rounds_paid": sorted(self.rounds_paid()),
                "released": [r.as_state() for r in self.accountant.released()]}

    def restore(self, state: dict[str, Any]) -> None:
        if "released" in state:
            self.accountant.restore([Released.from_state(r) for r in state["released"]])
        self.accountant.rounds = int(state.get("rounds", 0))  # an older checkpoint: a count
        self.rounds_paid().update(int(r) for r in state.get("rounds_paid", []))

    def rounds_paid(self) -> set[int]:
        """The server half's record of rounds that spent budget."""
        return set()


@stages.register("clip")
class ClipStage(Stage):
    """Fixed L2 clipping alone (robustness; no privacy guarantee without noise)."""

    privacy_operations = (CLIP,)
    requires_extra: ClassVar[str | None] = None  # no accountant: dp-accounting not needed

    def __init__(self, clip_norm: float | None = None, keep_metrics: bool = True) -> None:
        self.clip_norm = check_positive("clip_norm", _required("clip_norm", clip_norm))
        if not isinstance(keep_metrics, bool):  # bool("no") would be True
            raise ConfigError(f"keep_metrics: expected true or false, got {keep_metrics!r}")
        self.keep_metrics = keep_metrics

    def check_round_plan(self, plan: RoundPlan) -> None:
        _check_parameters("clip", plan)

    def client(self) -> Filter:
        return Chain(ClipFilter(self.clip_norm, keep_metrics=self.keep_metrics),
                             name="dp_clip")

    def server(self) -> Filter:
        return ClipReceiver(self.clip_norm)


@stages.register("local-dp")
class LocalDPStage(_DPStage):
    """Local DP: each client clips and adds noise; each client holds its own budget."""

    kind = "local-dp"

    privacy_operations = (CLIP, NOISE)

    def __init__(
        self, clip_norm: float | None = None, noise_multiplier: float | None = None,
        target_epsilon: float | None = None, rounds: int | None = None, delta: float = 1e-5,
        budget: float | None = None, seed: int | None = None,
    ) -> None:
        _check_settings(rounds=rounds, delta=delta, budget=budget, seed=seed)
        self.clip_norm = check_positive("clip_norm", _required("clip_norm", clip_norm))
        # the server sees every report of a client: no amplification by sampling locally
        self.sampling = SamplingSpec(population=1, clients_per_round=1)
        self.noise_multiplier = _noise_multiplier(
            noise_multiplier, target_epsilon, rounds, delta, self.sampling
        )
        if budget is None and target_epsilon is not None:
            budget = float(target_epsilon)
        self.delta, self.budget, self.seed = delta, budget, seed
        self.accountant = self._new_accountant()
        _check_budget_pays_a_round(self.accountant)
        self._clients = 0
        self._rounds_seen: set[int] = set()

    def check_round_plan(self, plan: RoundPlan) -> None:
        """Each update carries its full noise: any aggregator is post-processing. Each
        client's guarantee is about its own data, and ``delta`` must be far below one over the
        clients whose data the job protects, which only the job knows."""
        _check_parameters(self.kind, plan)
        check_delta(self.delta, plan.most, self.kind, plan.most_key)

    def _new_accountant(self) -> PrivacyAccountant:
        return PrivacyAccountant(
            noise_multiplier=self.noise_multiplier, delta=self.delta, sampling=self.sampling,
            budget=self.budget,
        )

    def client(self) -> Filter:
        seed = None if self.seed is None else self.seed + self._clients
        self._clients += 1
        return Chain(
            ClipFilter(self.clip_norm),
            GaussianNoise(self.noise_multiplier, accountant=self._new_accountant(), seed=seed),
            name="dp_local",
        )

    def server(self) -> Filter:
        return LocalDPReceiver(fixed_norm(self.clip_norm), rounds_seen=self._rounds_seen)

    def halves(self) -> tuple[Half, Half]:
        """From the classes: building a client half would advance the per-client seeds."""
        return (Half("dp_local", pushes=ClipFilter.pushes + GaussianNoise.pushes),
                Half("dp_local_in", pops=LocalDPReceiver.pops))

    def sync_rounds(self) -> None:
        # the epsilon of a client that took part in every round the server saw
        self.accountant.rounds = len(self._rounds_seen)

    def rounds_paid(self) -> set[int]:
        return self._rounds_seen


@stages.register("central-dp")
class CentralDPStage(_DPStage):
    """DP-FedAvg: clients clip (fixed or adaptive norm), the server adds calibrated noise.

    ``clip_norm`` fixes the norm; ``adaptive: {target_quantile, learning_rate, count_noise_std}``
    makes ``clip_norm`` the initial value of an Andrew et al. quantile estimate.
    """

    kind = "central-dp"

    # clients only clip; the noise is the server's, but the update is noised before it is
    # aggregated, so the same order rules apply (nothing may clip it again afterwards)
    privacy_operations = (CLIP, NOISE)

    def __init__(
        self, clients_per_round: int | None = None, clip_norm: float = 1.0,
        noise_multiplier: float | None = None, target_epsilon: float | None = None,
        rounds: int | None = None, delta: float = 1e-5, budget: float | None = None,
        population: int | None = None, sampling: str | None = None,
        adaptive: dict[str, float] | None = None, seed: int | None = None,
    ) -> None:
        clients_per_round = _required("clients_per_round", clients_per_round)
        if (isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int)
                or clients_per_round < 1):  # 0 was refused as population (its default) < 1
            raise ConfigError("clients_per_round: expected an integer >= 1 (the updates a round "
                              f"sums), got {shown(clients_per_round)}")
        _check_settings(rounds=rounds, delta=delta, budget=budget, population=population,
                        seed=seed)
        self.sampling = SamplingSpec(
            population=clients_per_round if population is None else population,
            clients_per_round=clients_per_round,
            sampling="poisson" if sampling is None else sampling,  # type: ignore[arg-type]
        )
        if sampling is not None and self.sampling.rate >= 1:  # refused rather than ignored
            raise ConfigError(
                "sampling: only used when population is above clients_per_round (how each "
                f"round's {clients_per_round} are drawn from it); population is "
                f"{self.sampling.population}: every client takes part every round and no "
                "sampling is accounted; remove sampling, or set population to the number of "
                f"clients the {clients_per_round} are drawn from")
        check_delta(delta, self.sampling.population, self.kind, "population")
        self.delta = delta
        self.clip_norm = check_positive("clip_norm", clip_norm)
        self.noise_multiplier = _noise_multiplier(
            noise_multiplier, target_epsilon, rounds, delta, self.sampling
        )
        if budget is None and target_epsilon is not None:
            budget = float(target_epsilon)
        self.accountant = PrivacyAccountant(
            noise_multiplier=self.noise_multiplier, delta=delta, sampling=self.sampling,
            budget=budget,
        )
        _check_budget_pays_a_round(self.accountant)
        self.estimator: QuantileClipNorm | None = None
        self.delta_noise_multiplier = self.noise_multiplier
        if adaptive is not None:
            if not isinstance(adaptive, dict):
                raise ConfigError("adaptive: expected a mapping of estimator settings")
            allowed = {"target_quantile", "learning_rate", "count_noise_std"}
            unknown = sorted(set(adaptive) - allowed)
            if unknown:
                raise ConfigError(
                    f"adaptive.{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}"
                )
            quantile = _adaptive_number(adaptive, "target_quantile", 0.5, "in (0, 1)",
                                        lambda v: 0 < v < 1)
            rate = _adaptive_number(adaptive, "learning_rate", 0.2, "> 0", lambda v: v > 0)
            default = "count_noise_std" not in adaptive
            count_std = _adaptive_number(adaptive, "count_noise_std", clients_per_round / 20,
                                         "> 0", lambda v: v > 0)
            # Andrew et al.: the count's noise uses part of the budget; the update sum gets the
            # rest, z_delta^-2 = z^-2 - (2 sigma_b)^-2
            if 2 * count_std <= self.noise_multiplier:
                raise ConfigError(
                    f"adaptive.count_noise_std must exceed noise_multiplier / 2 = "
                    f"{self.noise_multiplier / 2:.4g}, got {count_std:.4g}"
                    + (" (the default, clients_per_round / 20); give a larger count_noise_std"
                       if default else ""))
            self.delta_noise_multiplier = (
                self.noise_multiplier ** -2 - (2 * count_std) ** -2
            ) ** -0.5
            self.estimator = QuantileClipNorm(
                initial_norm=self.clip_norm,
                target_quantile=quantile, learning_rate=rate,
                count_noise_std=count_std, seed=seed,
            )
        self.seed = seed
        self._receiver: CentralNoise | None = None

    def norm(self, round: int) -> float:
        return self.estimator.norm(round) if self.estimator is not None else self.clip_norm

    def model_meta(self, round: int) -> dict[str, float]:
        """Server hook: metadata for round ``round``'s model broadcast. Clients clip to the
        broadcast norm, which is how an adaptive norm reaches clients in other processes."""
        return {META_CLIP_NORM: self.norm(round)}

    def client(self) -> Filter:
        return Chain(
            ClipFilter(self.norm, report_bit=self.estimator is not None), name="dp_central"
        )

    def server(self) -> Filter:
        if self._receiver is None:
            self._receiver = CentralNoise(
                norm=self.norm, noise_multiplier=self.delta_noise_multiplier,
                clients_per_round=self.sampling.clients_per_round, accountant=self.accountant,
                estimator=self.estimator, seed=self.seed,
            )
        return self._receiver

    def halves(self) -> tuple[Half, Half]:
        """From the classes: the server half is built once and kept (it holds the budget)."""
        return (Half("dp_central", pushes=ClipFilter.pushes),
                Half("dp_central_in", pops=CentralNoise.pops))

    def check_round_plan(self, plan: RoundPlan) -> None:
        """Refuse a job whose rounds release less noise than accounted.

        Each update gets ``1/m`` of the sum's noise variance (``m = clients_per_round``), so a
        round that closes with fewer than ``m`` updates releases a model noised less than the
        accountant assumes, and the epsilon reported is understated; so does an aggregator
        that releases something other than the mean (Krum releases one update, with ``1/m``
        of the variance). More than ``m`` updates only add noise, which is safe when every
        client is accounted to take part (``q = 1``); with ``population`` above ``m`` they
        also mean a higher sampling rate than accounted, which their extra noise does not pay
        for (z = 1, 50 rounds, 5 of 20 accounted, 10 of 20 taken: 14.1 reported, 16.7 real).
        """
        _check_parameters(self.kind, plan)
        if plan.most > self.sampling.population:  # the job's clients, when there are more
            check_delta(self.delta, plan.most, self.kind, plan.most_key)
        m = self.sampling.clients_per_round
        if not plan.aggregates_mean:
            raise ConfigError(
                f"central-dp calibrates its noise to the mean of the round's updates, which "
                f"aggregator {plan.aggregator!r} does not release: each update carries only 1/"
                f"{m} of the noise, so the epsilon reported would be understated; use an "
                f"aggregator built on the mean ({', '.join(plan.mean_aggregators())}), or "
                "local-dp")
        if plan.fewest < m:
            raise ConfigError(
                f"central-dp clients_per_round {m} is more than a round may sum: a round may "
                f"close with {plan.fewest} updates ({plan.fewest_key} {plan.fewest}), whose sum "
                "would carry less noise than accounted, understating epsilon; set "
                f"clients_per_round to at most {plan.fewest}, or {plan.fewest_key} to at "
                f"least {m}")
        if self.sampling.rate < 1 and plan.most > m:
            raise ConfigError(
                f"central-dp accounts for clients_per_round {m} of population "
                f"{self.sampling.population} a round (sampling rate {self.sampling.rate:.3g}), "
                f"but a round may take {plan.most} clients ({plan.most_key} {plan.most}): "
                f"the real rate is higher, understating epsilon; set {plan.most_key} to {m}, "
                f"or clients_per_round to {plan.most}")

    def before_round(self, round: int) -> None:
        self.say_if_seeded()
        if self._receiver is not None and round in self._receiver.rounds_spent:
            return
        self.accountant.check_round(round)

    def after_round(self, record: Any) -> None:
        """Log epsilon, and warn when the round's sum carried less noise than accounted.

        Each update gets ``1/m`` of the sum's noise variance (``m = clients_per_round``), so a
        round that aggregated fewer than ``m`` updates released a model noised less than the
        accountant assumes: the epsilon it reports is then too small. A job file that allows it
        is refused when loaded (:meth:`check_round_size`); this says so for a server built by
        hand with a smaller ``min_clients``.
        """
        super().after_round(record)
        m = self.sampling.clients_per_round
        accepted = int(getattr(record, "accepted", 0))
        if getattr(record, "status", "ok") == "ok" and 0 < accepted < m:
            log.error(  # a weaker guarantee than the one reported: shown without --verbose
                "central-dp: round %s aggregated %d updates, fewer than clients_per_round=%d: "
                "its model carries less noise than the accountant assumes, so the epsilon "
                "reported is too small; set clients_per_round at most clients.min_clients",
                getattr(record, "round", "?"), accepted, m)

    def rounds_paid(self) -> set[int]:
        return self.server().rounds_spent  # type: ignore[attr-defined,no-any-return]


__all__ = [
    "META_CLIP_NORM",
    "CentralDPStage",
    "CentralNoise",
    "ClipStage",
    "GaussianNoise",
    "LocalDPReceiver",
    "LocalDPStage",
    "add_gaussian",
]
