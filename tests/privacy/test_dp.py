"""The Gaussian mechanism: noise matches its calibration, order and settings fail closed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from foedus.config.spec import JobSpec, load_job
from foedus.core.errors import BudgetExhausted, ConfigError, PrivacyError, RejectedUpdate
from foedus.core.filter import stages
from foedus.core.message import Kind, Message
from foedus.privacy.accountant import PrivacyAccountant, SamplingSpec
from foedus.privacy.clip import CLIP_TAG, ClipFilter
from foedus.privacy.dp import (
    NOISE_TAG,
    CentralDPStage,
    CentralNoise,
    GaussianNoise,
    LocalDPReceiver,
    LocalDPStage,
)
from foedus.roles.server import RoundRecord

SIZE = 200_000


def model(round: int = 1) -> Message:
    return Message.create(Kind.MODEL, job_id="j", round=round, sender="server",
                          params={"w": np.zeros(SIZE)})


def clipped_update(clip_norm: float, round: int = 1, sender: str = "c1") -> Message:
    """An update equal to the global model (delta 0), clipped: the output is pure noise."""
    m = model(round)
    f = ClipFilter(clip_norm)
    f.observe_model(m)
    out = f(m.reply(Kind.UPDATE, sender, params={"w": np.zeros(SIZE)}, num_examples=5))
    assert out is not None
    return out


def test_local_noise_std_is_noise_multiplier_times_clip_norm() -> None:
    out = GaussianNoise(0.8, seed=3)(clipped_update(2.0))
    assert out is not None and out.trail == (CLIP_TAG, NOISE_TAG)
    noise = out.params["w"]
    # the sample std of 200k draws is within 1% of sigma with overwhelming probability
    assert noise.std() == pytest.approx(0.8 * 2.0, rel=0.01)
    assert abs(noise.mean()) < 5 * 1.6 / np.sqrt(SIZE)


def test_noise_before_clipping_is_refused() -> None:
    raw = model().reply(Kind.UPDATE, "c1", params={"w": np.ones(SIZE)}, num_examples=5)
    with pytest.raises(PrivacyError, match="put clipping before noise"):
        GaussianNoise(1.0)(raw)


def test_central_noise_on_the_sum_of_m_updates_has_std_z_times_c() -> None:
    m = 4
    receiver = CentralNoise(
        norm=lambda _r: 1.5, noise_multiplier=1.2, clients_per_round=m, seed=7,
        accountant=PrivacyAccountant(noise_multiplier=1.2, delta=1e-5,
                                     sampling=SamplingSpec(m, m)),
    )
    total = np.zeros(SIZE)
    for i in range(m):
        out = receiver(clipped_update(1.5, sender=f"c{i}"))
        assert out is not None and out.trail == ()
        total += out.params["w"]
    assert total.std() == pytest.approx(1.2 * 1.5, rel=0.01)
    assert receiver.accountant.rounds == 1, "one round is charged once, not per update"


def test_central_noise_rejects_a_client_that_clipped_to_another_norm() -> None:
    receiver = CentralNoise(
        norm=lambda _r: 1.0, noise_multiplier=1.0, clients_per_round=2,
        accountant=PrivacyAccountant(noise_multiplier=1.0, delta=1e-5,
                                     sampling=SamplingSpec(2, 2)),
    )
    with pytest.raises(PrivacyError, match=r"server expects 1\.0"):
        receiver(clipped_update(5.0))


def test_local_receiver_requires_clip_then_noise() -> None:
    receiver = LocalDPReceiver(lambda _r: 1.0)
    with pytest.raises(PrivacyError, match=r"cannot undo 'dp\.gaussian'"):
        receiver(clipped_update(1.0))
    noised = GaussianNoise(1.0, seed=0)(clipped_update(1.0))
    assert noised is not None
    out = receiver(noised)
    assert out is not None and out.trail == () and "dp.clip_norm" not in out.meta


def test_local_dp_client_stops_sending_when_its_budget_is_spent() -> None:
    stage = LocalDPStage(clip_norm=1.0, noise_multiplier=2.0, budget=3.0, seed=0)
    allowed = stage.accountant.max_rounds()
    assert allowed >= 1
    noise = GaussianNoise(2.0, accountant=stage._new_accountant(), seed=0)
    for rnd in range(1, allowed + 1):
        assert noise(clipped_update(1.0, round=rnd)) is not None
    with pytest.raises(BudgetExhausted, match="privacy budget exhausted"):
        noise(clipped_update(1.0, round=allowed + 1))


def test_central_stage_hooks_stop_before_the_budget_and_log_epsilon() -> None:
    stage = CentralDPStage(clients_per_round=2, clip_norm=1.0, noise_multiplier=1.0,
                           budget=8.0, seed=0)
    receiver = stage.server()
    allowed = stage.accountant.max_rounds()
    for rnd in range(1, allowed + 1):
        stage.before_round(rnd)
        receiver(clipped_update(1.0, round=rnd))
        record = RoundRecord(rnd)
        stage.after_round(record)
        assert record.metrics["dp_epsilon"] == pytest.approx(stage.accountant.epsilon(rnd))
    with pytest.raises(BudgetExhausted, match=f"round {allowed + 1} would bring epsilon"):
        stage.before_round(allowed + 1)
    # without the hook, the filter itself refuses the update (counted by the server)
    with pytest.raises(RejectedUpdate, match="budget_exhausted: privacy budget exhausted"):
        receiver(clipped_update(1.0, round=allowed + 1))


def test_target_epsilon_calibrates_the_noise() -> None:
    stage = CentralDPStage(clients_per_round=10, population=100, target_epsilon=4.0,
                           rounds=30, delta=1e-5)
    assert stage.accountant.epsilon(30) == pytest.approx(4.0, rel=0.02)
    assert stage.accountant.budget == 4.0


@pytest.mark.parametrize(("name", "params", "match"), [
    ("local-dp", {"clip_norm": 1.0}, "exactly one of"),
    ("local-dp", {"clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 2.0},
     "not both"),
    ("local-dp", {"clip_norm": 1.0, "target_epsilon": 2.0}, "needs rounds"),
    ("local-dp", {"clip_norm": -1.0, "noise_multiplier": 1.0}, "clip_norm"),
    ("central-dp", {"clients_per_round": 10, "noise_multiplier": 0.0}, "noise_multiplier"),
    ("central-dp", {"clients_per_round": 10, "noise_multiplier": 1.0, "delta": 2.0}, "delta"),
    ("central-dp", {"clients_per_round": 10, "noise_multiplier": 1.0, "sampling": "x"},
     "sampling"),
    ("central-dp", {"clients_per_round": 10, "noise_multiplier": 1.0,
                    "adaptive": {"count_noise_std": 0.1}}, "count_noise_std"),
    ("central-dp", {"clients_per_round": 10, "noise_multiplier": 1.0,
                    "adaptive": {"quantile": 0.5}}, "unknown key"),
])
def test_invalid_stage_settings_raise_at_construction(
    name: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        stages.create(name, **params)


def test_adaptive_central_stage_moves_the_norm_clients_and_server_agree_on() -> None:
    stage = CentralDPStage(clients_per_round=4, clip_norm=1.0, noise_multiplier=1.0,
                           adaptive={"count_noise_std": 1.0, "learning_rate": 0.5}, seed=1)
    assert stage.delta_noise_multiplier > stage.noise_multiplier  # the count takes a share
    receiver = stage.server()
    for i in range(4):  # every update is far smaller than the norm: it must shrink
        client = stage.client()
        m = model(1)
        client.handler("model")(m)  # the model wire, as a topology would feed it
        sent = client(m.reply(Kind.UPDATE, f"c{i}", params={"w": np.full(SIZE, 1e-6)},
                              num_examples=1))
        assert sent is not None and isinstance(sent.meta["dp.unclipped"], bool)
        assert receiver(sent) is not None
    assert stage.norm(2) < 1.0


@pytest.mark.parametrize(("name", "params"), [
    ("central-dp", {"clients_per_round": 10, "noise_multiplier": 1.0, "budget": 0.1}),
    ("local-dp", {"clip_norm": 1.0, "noise_multiplier": 1.0, "budget": 0.1}),
])
def test_a_budget_too_small_for_one_round_is_refused_when_the_stage_is_built(
        name: str, params: dict[str, float]) -> None:
    """Such a job used to start, stop before round 1, and exit 0 with the initial model."""
    with pytest.raises(ConfigError, match=r"^budget: 0.1 cannot pay a single round: one round "
                                          r"spends epsilon 4\.7"):
        stages.create(name, **params)


def test_a_budget_that_pays_exactly_one_round_is_accepted() -> None:
    sampling = SamplingSpec(10, 10)
    one = PrivacyAccountant(noise_multiplier=1.0, delta=1e-5, sampling=sampling).epsilon(1)
    stage = CentralDPStage(clients_per_round=10, noise_multiplier=1.0, budget=one)
    assert stage.accountant.max_rounds() == 1


def test_a_round_with_fewer_updates_than_clients_per_round_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each update carries 1/m of the sum's noise variance: fewer than m updates means less
    noise than accounted, so the reported epsilon understates the loss; said, not silent."""
    stage = CentralDPStage(clients_per_round=4, clip_norm=1.0, noise_multiplier=1.0, seed=0)
    full, short = RoundRecord(1), RoundRecord(2)
    full.accepted, short.accepted = 4, 3
    with caplog.at_level("ERROR", logger="foedus.privacy.dp"):
        stage.after_round(full)
        assert not caplog.records
        stage.after_round(short)
    assert [r.getMessage()[:62] for r in caplog.records] == [
        "central-dp: round 2 aggregated 3 updates, fewer than clients_p"]
    assert "epsilon reported is too small" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("params", "message"), [
    ({"delta": "1e-5"}, r"^delta: expected a number in \(0, 1\), got '1e-5' \(text"),
    ({"budget": "8"}, r"^budget: expected a number > 0 \(epsilon\), got '8' \(text"),
    ({"population": "50"}, r"^population: expected an integer >= 1, got '50' \(text"),
    ({"seed": "3"}, r"^seed: expected an integer >= 0, got '3' \(text"),
    ({"noise_multiplier": None, "target_epsilon": 8.0, "rounds": "5"},
     r"^rounds: expected an integer >= 1, got '5' \(text"),
])
def test_mistyped_accounting_settings_are_one_line_naming_the_key(
        params: dict[str, object], message: str) -> None:
    """They used to fail with "'<' not supported between instances of 'str' and 'int'"."""
    with pytest.raises(ConfigError, match=message):
        stages.create("central-dp", **{"clients_per_round": 5, "noise_multiplier": 1.0, **params})


def test_a_mistyped_local_dp_seed_is_refused_when_the_stage_is_built() -> None:
    with pytest.raises(ConfigError, match=r"^seed: expected an integer >= 0, got '3' \(text"):
        stages.create("local-dp", clip_norm=1.0, noise_multiplier=1.0, seed="3")


def test_clip_keep_metrics_must_be_a_boolean() -> None:
    """bool("no") is True: the option used to do the opposite of what the job file said."""
    with pytest.raises(ConfigError, match=r"^keep_metrics: expected true or false, got 'no'$"):
        stages.create("clip", clip_norm=1.0, keep_metrics="no")


def central_dp_job(clients: dict[str, int], clients_per_round: int) -> dict[str, object]:
    return {"job_id": "cdp", "data": {"dataset": "digits", "partition": "iid"},
            "clients": clients,
            "pipeline": [{"type": "central-dp", "params": {
                "clients_per_round": clients_per_round, "noise_multiplier": 1.0}}]}


@pytest.mark.parametrize(("clients", "key"), [
    ({"count": 10, "min_clients": 5}, "clients.min_clients"),
    ({"count": 10, "per_round": 5}, "clients.per_round"),
    ({"count": 5}, "clients.count"),
])
def test_a_central_dp_job_whose_rounds_may_sum_fewer_updates_than_calibrated_is_refused(
        clients: dict[str, int], key: str) -> None:
    """The noise is split over clients_per_round = 10 updates: a round that closes with 5 of
    them releases a model with half the noise variance the accountant assumes, so the epsilon it
    reports is understated. Such a job used to be accepted and log an error each short round."""
    with pytest.raises(ConfigError) as refused:
        JobSpec.from_dict(central_dp_job(clients, 10))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("pipeline[0]: central-dp clients_per_round 10 ")
    assert f"may close with 5 updates ({key} 5)" in message
    assert "set clients_per_round to at most 5" in message


@pytest.mark.parametrize("clients", [
    {"count": 10, "min_clients": 10},
    {"count": 10},  # a round sums 10 updates: more noise than calibrated for 5, never less
    {"count": 20, "per_round": 10, "min_clients": 5},
])
def test_a_central_dp_job_whose_rounds_sum_at_least_the_calibrated_updates_is_accepted(
        clients: dict[str, int]) -> None:
    spec = JobSpec.from_dict(central_dp_job(clients, 5))
    assert spec.pipeline[0].params["clients_per_round"] == 5


@pytest.mark.parametrize(("clients", "key"), [
    ({"count": 20, "per_round": 10, "min_clients": 5}, "clients.per_round"),
    ({"count": 10, "min_clients": 5}, "clients.count"),
])
def test_a_central_dp_job_whose_rounds_take_more_clients_than_its_sampling_rate_says_is_refused(
        clients: dict[str, int], key: str) -> None:
    """Accounted as 5 of a population of 20 (q = 0.25), a round of 10 clients samples at twice
    that rate; its extra noise (10 updates' shares) does not make up for it: at z = 1 over 50
    rounds the accountant would report 14.1 for a real 16.7 (Poisson)."""
    job = central_dp_job(clients, 5)
    job["pipeline"][0]["params"]["population"] = 20  # type: ignore[index]
    with pytest.raises(ConfigError) as refused:
        JobSpec.from_dict(job)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("pipeline[0]: central-dp accounts for clients_per_round 5 of "
                              "population 20 a round")
    assert f"a round may take 10 clients ({key} 10)" in message


def test_amplification_by_sampling_is_accepted_when_a_round_takes_clients_per_round() -> None:
    job = central_dp_job({"count": 20, "per_round": 5}, 5)
    job["pipeline"][0]["params"]["population"] = 20  # type: ignore[index]
    assert JobSpec.from_dict(job).clients.per_round == 5


@pytest.mark.parametrize(("adaptive", "message"), [
    ({"target_quantile": "half", "count_noise_std": 1.0},
     r"^adaptive\.target_quantile: expected a number in \(0, 1\), got 'half'$"),
    ({"target_quantile": "0.5", "count_noise_std": 1.0},  # was read as 0.5
     r"^adaptive\.target_quantile: expected a number in \(0, 1\), got '0.5' \(text, not a "
     r"number: remove the quotes\)$"),
    ({"target_quantile": 2, "count_noise_std": 1.0},
     r"^adaptive\.target_quantile: expected a number in \(0, 1\), got 2$"),
    ({"learning_rate": -1, "count_noise_std": 1.0},
     r"^adaptive\.learning_rate: expected a number > 0, got -1$"),
    ({"count_noise_std": "x"},  # was "could not convert string to float: 'x'"
     r"^adaptive\.count_noise_std: expected a number > 0, got 'x'$"),
    ({"count_noise_std": True},  # was read as 1.0
     r"^adaptive\.count_noise_std: expected a number > 0, got True$"),
    ({"count_noise_std": float("nan")},
     r"^adaptive\.count_noise_std: expected a number > 0, got nan$"),
    ({}, r"^adaptive\.count_noise_std must exceed noise_multiplier / 2 = 0\.5, got 0\.2 "
         r"\(the default, clients_per_round / 20\); give a larger count_noise_std"),
])
def test_mistyped_adaptive_clipping_settings_are_one_line_naming_the_key(
        adaptive: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stages.create("central-dp", clients_per_round=4, noise_multiplier=1.0,
                      adaptive=adaptive)


@pytest.mark.parametrize("value", [0, -3, "4", 4.0, True])
def test_clients_per_round_must_be_a_positive_integer_and_the_error_names_it(
        value: object) -> None:
    """0 used to be refused as "population must be at least 1, got 0", a key never written."""
    with pytest.raises(ConfigError, match=r"^clients_per_round: expected an integer >= 1 \(the "
                                          rf"updates a round sums\), got {value!r}"):
        stages.create("central-dp", clients_per_round=value, noise_multiplier=1.0)


@pytest.mark.parametrize(("key", "text"), [
    ("delta", "1e-5"), ("budget", "1e3"), ("noise_multiplier", "1e0"),
])
def test_a_number_yaml_reads_as_text_is_refused_saying_how_to_write_it(
        tmp_path: Path, key: str, text: str) -> None:
    """YAML 1.1 reads 1e-5 (an exponent without a decimal point) as the string '1e-5': the
    refusal "got '1e-5'" looked like a number refused for being a number."""
    params = {"clip_norm": "1.0", "noise_multiplier": "1.0"} | {key: text}
    flow = ", ".join(f"{k}: {v}" for k, v in params.items())
    job = tmp_path / "job.yaml"
    job.write_text(f"job_id: j\npipeline:\n  - {{type: local-dp, params: {{{flow}}}}}\n")
    with pytest.raises(ConfigError) as refused:
        load_job(job)
    message = str(refused.value)
    assert message.startswith(f"pipeline[0]: {key}")
    assert f"got '{text}' (text, not a number: YAML reads" in message
    assert "write it with a decimal point, as in 1.0e-5" in message


@pytest.mark.parametrize(("name", "params", "message"), [
    ("local-dp", {"noise_multiplier": 1.0},
     r"^clip_norm: required: the L2 norm every update is clipped to \(e\.g\. clip_norm: 1\.0\)$"),
    ("clip", {},
     r"^clip_norm: required: the L2 norm every update is clipped to \(e\.g\. clip_norm: 1\.0\)$"),
    ("central-dp", {"noise_multiplier": 1.0},
     r"^clients_per_round: required: the updates a round sums, which the noise is split over "
     r"\(at most clients\.min_clients\)$"),
])
def test_a_missing_required_setting_is_named_with_what_it_means(
        name: str, params: dict[str, object], message: str) -> None:
    """It read "LocalDPStage.__init__() missing 1 required positional argument: 'clip_norm'"."""
    with pytest.raises(ConfigError, match=message):
        stages.create(name, **params)


@pytest.mark.parametrize(("name", "params"), [
    ("central-dp", {"clients_per_round": 4, "noise_multiplier": 1.0, "seed": 0}),
    ("local-dp", {"clip_norm": 1.0, "noise_multiplier": 1.0, "seed": 0}),
])
def test_a_seeded_dp_stage_says_once_that_its_noise_can_be_removed(
        name: str, params: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    """Anyone holding the job file can draw the same noise and subtract it (the sum of a
    round's draws does not depend on which update got which), so the reported epsilon does not
    hold: said at error level (shown without --verbose), once per job, not silent."""
    stage = stages.create(name, **params)
    with caplog.at_level("ERROR", logger="foedus.privacy.dp"):
        stage.before_round(1)
        stage.before_round(2)
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"{name}: seed 0 makes the noise reproducible by anyone holding the job file, who can "
        "subtract it: the epsilon reported does not hold; leave seed out outside tests")


def test_an_unseeded_dp_stage_says_nothing_about_seeds(caplog: pytest.LogCaptureFixture) -> None:
    stage = stages.create("central-dp", clients_per_round=4, noise_multiplier=1.0)
    with caplog.at_level("ERROR", logger="foedus.privacy.dp"):
        stage.before_round(1)
    assert not caplog.records


@pytest.mark.parametrize("aggregator", ["krum", "median", "trimmed-mean", "geomedian"])
def test_central_dp_with_an_aggregator_that_does_not_release_the_mean_is_refused(
        aggregator: str) -> None:
    """Each update carries 1/m of the sum's noise variance: Krum releases one client's update
    with std z C / sqrt(m), not the sum's z C, so the epsilon reported understated the loss."""
    job = central_dp_job({"count": 6}, 6) | {"aggregator": aggregator}
    with pytest.raises(ConfigError) as refused:
        JobSpec.from_dict(job)
    message = str(refused.value)
    assert message.startswith(
        f"pipeline[0]: central-dp calibrates its noise to the mean of the round's updates, "
        f"which aggregator {aggregator!r} does not release")
    assert "use an aggregator built on the mean (fedadagrad, fedadam, fedavg, fedavgm, " \
        "fedyogi), or local-dp" in message and "\n" not in message


@pytest.mark.parametrize("aggregator", ["fedavg", "fedadam", "fedavgm"])
def test_central_dp_with_an_aggregator_built_on_the_mean_is_accepted(aggregator: str) -> None:
    assert JobSpec.from_dict(central_dp_job({"count": 6}, 6) | {"aggregator": aggregator})


def test_local_dp_noises_each_update_so_any_aggregator_is_accepted() -> None:
    job = {"job_id": "ldp", "clients": {"count": 6}, "aggregator": "krum",
           "pipeline": [{"type": "local-dp", "params": {"clip_norm": 1.0,
                                                         "noise_multiplier": 1.0}}]}
    assert JobSpec.from_dict(job).aggregator.type == "krum"


@pytest.mark.parametrize("stage", [
    {"type": "clip", "params": {"clip_norm": 1.0}},
    {"type": "local-dp", "params": {"clip_norm": 1.0, "noise_multiplier": 1.0}},
    {"type": "central-dp", "params": {"clients_per_round": 10, "noise_multiplier": 1.0}},
])
@pytest.mark.parametrize(("model", "aggregator", "kind"), [
    ("federated-forest", "forest-histograms", "forest-histograms"),
    ("sklearn-random-forest", "tree-bagging", "tree-ensemble"),
])
def test_clipping_and_noise_refuse_a_model_whose_updates_are_not_parameters(
        stage: dict[str, object], model: str, aggregator: str, kind: str) -> None:
    """Clipping a forest's histograms or trees broke them: every update was refused by the
    aggregator (changed_forest) or never sent, and the job ended no_quorum after its rounds."""
    job = {"job_id": "trees", "data": {"dataset": "breast_cancer", "partition": "iid"},
           "clients": {"count": 10}, "model": {"type": model},
           "aggregator": aggregator, "pipeline": [stage]}
    with pytest.raises(ConfigError) as refused:
        JobSpec.from_dict(job)
    assert str(refused.value).startswith(
        f"pipeline[0]: {stage['type']} works on model parameter updates, but aggregator "
        f"{aggregator!r} combines {kind}")


def composed(*segments: tuple[float, int]) -> float:
    """Epsilon at 1e-5 of full-participation rounds, (noise multiplier, rounds) in order."""
    import dp_accounting as dpa
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for z, rounds in segments:
        accountant.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds))
    return float(accountant.get_epsilon(1e-5))


@pytest.mark.parametrize("name", ["central-dp", "local-dp"])
def test_a_server_resumed_with_other_noise_keeps_the_epsilon_of_the_rounds_it_released(
        name: str) -> None:
    """The checkpoint kept only a count of rounds: resumed with noise_multiplier 3 after 2
    rounds at 1, the job reported epsilon 2.985 after 4 rounds, less than the 7.077 it had
    already reported after 2 (composed: 7.53), and a spent budget could be refilled that way."""
    def stage(z: float) -> LocalDPStage | CentralDPStage:
        params = ({"clients_per_round": 4} if name == "central-dp" else {"clip_norm": 1.0})
        return stages.create(name, noise_multiplier=z, budget=7.4, **params)  # type: ignore[return-value]

    def release(s: LocalDPStage | CentralDPStage, round: int) -> None:
        s.before_round(round)
        if isinstance(s, CentralDPStage):
            s.server().spend(round)  # type: ignore[attr-defined]
        else:
            s.rounds_paid().add(round)

    first = stage(1.0)
    for r in (1, 2):
        release(first, r)
    assert first.epsilon == pytest.approx(composed((1.0, 2)))
    resumed = stage(3.0)
    resumed.restore(first.state())
    assert resumed.epsilon == pytest.approx(composed((1.0, 2)))
    release(resumed, 3)
    assert resumed.epsilon == pytest.approx(composed((1.0, 2), (3.0, 1)))
    with pytest.raises(BudgetExhausted):  # 7.4 was nearly spent at noise 1: 7.53 > 7.4
        resumed.before_round(4)
    again = stage(3.0)
    again.restore(resumed.state())  # a second resume keeps both noise levels
    assert again.epsilon == pytest.approx(composed((1.0, 2), (3.0, 1)))


@pytest.mark.parametrize(("name", "params"), [
    ("central-dp", {"clients_per_round": 4, "noise_multiplier": 1e300}),
    ("central-dp", {"clients_per_round": 10, "population": 20, "sampling": "fixed",
                    "noise_multiplier": 1e9}),
    ("local-dp", {"clip_norm": 1.0, "noise_multiplier": 1e300}),
])
def test_noise_the_accountant_cannot_analyse_is_refused_when_the_stage_is_built(
        name: str, params: dict[str, object]) -> None:
    """It failed in round 1 inside the server's filter: "OverflowError: (34, 'Numerical result
    out of range')"."""
    with pytest.raises(ConfigError, match=r"^noise_multiplier: dp-accounting cannot analyse"):
        stages.create(name, **params)


@pytest.mark.parametrize("name", ["local-dp", "central-dp"])
def test_rounds_beside_noise_multiplier_is_refused_saying_rounds_only_calibrates(
        name: str) -> None:
    """rounds is only the horizon target_epsilon calibrates the noise for: with
    noise_multiplier it used to be accepted and ignored (a reader could think it capped the
    rounds, or changed the noise)."""
    with pytest.raises(ConfigError) as refused:
        stages.create(name, clip_norm=1.0, clients_per_round=5, noise_multiplier=1.0,
                      rounds=50) if name == "central-dp" else stages.create(
            name, clip_norm=1.0, noise_multiplier=1.0, rounds=50)
    assert str(refused.value) == (
        "rounds: only used with target_epsilon (the rounds its noise is calibrated for); "
        "noise_multiplier 1 is used as given and rounds would be ignored: remove rounds (the "
        "job's length is its top-level rounds:, a budget stops it early), or give "
        "target_epsilon instead of noise_multiplier")


@pytest.mark.parametrize(("params", "message"), [
    ({"noise_multiplier": 1.0, "target_epsilon": 8.0, "rounds": 50},
     "give noise_multiplier or target_epsilon, not both: noise_multiplier sets the noise, "
     "target_epsilon (with rounds) calibrates it; with both, one would be ignored"),
    ({}, "give exactly one of noise_multiplier (the noise) and target_epsilon (with rounds: "
         "the noise calibrated to reach it)"),
])
def test_noise_is_set_by_exactly_one_setting(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        stages.create("local-dp", clip_norm=1.0, **params)
    assert str(refused.value) == message


@pytest.mark.parametrize("params", [
    {"sampling": "fixed"}, {"sampling": "poisson", "population": 10},
])
def test_sampling_without_a_population_above_clients_per_round_is_refused(
        params: dict[str, object]) -> None:
    """With population = clients_per_round every client takes part every round, and sampling
    was ignored: a job file saying sampling: fixed got no sampling accounted, silently."""
    with pytest.raises(ConfigError) as refused:
        stages.create("central-dp", clients_per_round=10, noise_multiplier=1.0, **params)
    assert str(refused.value).startswith(
        "sampling: only used when population is above clients_per_round (how each round's 10 "
        "are drawn from it); population is 10: every client takes part every round and no "
        "sampling is accounted; remove sampling, or set population")


@pytest.mark.parametrize("delta", [0.5, 0.1])
def test_a_delta_not_below_one_over_the_population_is_refused_when_the_stage_is_built(
        delta: float) -> None:
    """delta >= 1/N allows publishing one of the N clients' data outright (that mechanism is
    (0, 1/N)-DP): the guarantee is empty, and delta: 0.5 used to be accepted without comment."""
    with pytest.raises(ConfigError) as refused:
        stages.create("central-dp", clients_per_round=10, noise_multiplier=1.0, delta=delta)
    assert str(refused.value) == (
        f"delta: {delta:g} is not below 1/n = 0.1 for the n = 10 clients central-dp protects "
        "(population): such a delta allows publishing one client's data outright; use a delta "
        "far below 1/n, at most 1/(10 n) = 0.01 (e.g. 1.0e-5)")


@pytest.mark.parametrize(("stage", "clients"), [
    ({"type": "local-dp", "params": {"clip_norm": 1.0, "noise_multiplier": 1.0,
                                     "delta": 0.2}}, {"count": 5}),
    ({"type": "central-dp", "params": {"clients_per_round": 2, "noise_multiplier": 1.0,
                                       "delta": 0.2}}, {"count": 5, "min_clients": 2}),
])
def test_a_delta_not_below_one_over_the_job_clients_is_refused_when_the_job_is_loaded(
        stage: dict[str, object], clients: dict[str, int]) -> None:
    """The stage alone cannot know how many clients local-dp protects; the job can."""
    job = {"job_id": "d", "data": {"dataset": "digits", "partition": "iid"},
           "clients": clients, "pipeline": [stage]}
    with pytest.raises(ConfigError) as refused:
        JobSpec.from_dict(job)
    assert str(refused.value).startswith(
        f"pipeline[0]: delta: 0.2 is not below 1/n = 0.2 for the n = 5 clients {stage['type']} "
        "protects (clients.count)")


def test_a_delta_far_below_one_over_the_clients_is_accepted() -> None:
    job = {"job_id": "d", "data": {"dataset": "digits", "partition": "iid"},
           "clients": {"count": 5}, "pipeline": [{"type": "local-dp", "params": {
               "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 0.019}}]}
    assert JobSpec.from_dict(job).pipeline[0].params["delta"] == 0.019


def test_local_noise_refuses_a_second_release_for_a_round_it_already_noised() -> None:
    """A client that gets the same round's model twice (a retained broadcast redelivered after
    a reconnect) trained and answered again: the filter added fresh noise and sent a second
    release of the round while its accountant charged the round once, so the client's real
    epsilon exceeded what it and the server counted. The second release is now refused."""
    noise = GaussianNoise(1.0, accountant=PrivacyAccountant(
        noise_multiplier=1.0, delta=1e-5, sampling=SamplingSpec(1, 1)))
    assert noise(clipped_update(1.0, round=1)) is not None
    with pytest.raises(PrivacyError, match=r"^round 1 was already released with its own noise"):
        noise(clipped_update(1.0, round=1))
    assert noise(clipped_update(1.0, round=2)) is not None
    assert noise.accountant is not None and noise.accountant.rounds == 2
