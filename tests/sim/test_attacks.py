"""The byzantine stage turns chosen clients into attackers and leaves the others alone."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.errors import ConfigError
from foedus.core.filter import stages
from foedus.core.message import Kind, Message
from foedus.sim.attacks import ByzantineStage


def update(sender: str) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender,
                          params={"w": np.arange(1, 5, dtype=np.float32)}, num_examples=3)


def test_sign_flip_negates_and_scales_the_attackers_model() -> None:
    attack = ByzantineStage(["evil"], attack="sign-flip", scale=10).client()
    out = attack.process(update("evil"))
    np.testing.assert_array_equal(out.params["w"], -10 * np.arange(1, 5, dtype=np.float32))
    assert out.params["w"].dtype == np.float32
    assert out.num_examples == 3  # the attacker keeps claiming its real example count


def test_noise_replaces_the_model_with_gaussian_noise_of_the_given_scale() -> None:
    attack = ByzantineStage(["evil"], attack="noise", scale=10).client()
    big = Message.create(Kind.UPDATE, job_id="j", round=1, sender="evil",
                         params={"w": np.zeros(20_000, np.float32)}, num_examples=1)
    noise = attack.process(big).params["w"]
    assert 9.5 < float(noise.std()) < 10.5
    assert abs(float(noise.mean())) < 0.3


def test_honest_clients_and_other_messages_pass_unchanged() -> None:
    attack = ByzantineStage(["evil"]).client()
    honest = update("good")
    assert attack.process(honest) is honest
    model = Message.create(Kind.MODEL, job_id="j", round=1, sender="evil",
                           params={"w": np.ones(2)})
    assert attack.process(model) is model


def test_mixed_alternates_the_attacks_over_the_attackers() -> None:
    attack = ByzantineStage(["a", "b"], attack="mixed", scale=10).client()
    flipped = attack.process(update("a")).params["w"]
    noisy = attack.process(update("b")).params["w"]
    np.testing.assert_array_equal(flipped, -10 * np.arange(1, 5, dtype=np.float32))
    assert not np.array_equal(noisy, -10 * np.arange(1, 5, dtype=np.float32))


def test_is_registered_for_job_files() -> None:
    stage = stages.create("byzantine", attackers=["client-000"])
    assert isinstance(stage, ByzantineStage)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"attackers": []}, "attackers"),
    ({"attackers": "client-000"}, "attackers"),
    ({"attackers": ["a"], "attack": "label-flip"}, "attack must be one of"),
    ({"attackers": ["a"], "scale": 0}, "scale"),
])
def test_bad_settings_are_refused_naming_the_problem(kwargs: dict[str, object],
                                                     problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ByzantineStage(**kwargs)  # type: ignore[arg-type]
