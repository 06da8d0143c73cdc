"""The round collector: what it admits, refuses and records for one round."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.roles.collect import RoundCollector


def update(sender: str, value: float, n: int, accuracy: float) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender,
                          params={"w": np.full(4, value)}, num_examples=n,
                          metrics={"accuracy": accuracy})


async def test_an_update_refused_late_moves_from_accepted_to_rejected_when_the_round_closes(
) -> None:
    collector = RoundCollector(job_id="j", aggregator=FedAvg(group=8))
    await collector.open(1, {"w": np.zeros(4)})
    await collector.offer(update("a", 1.0, 10, 0.9))
    await collector.offer(update("nan", np.nan, 1000, 0.1))  # held back in FedAvg's group
    await collector.offer(update("b", 3.0, 30, 0.7))
    assert collector.tally is not None and collector.tally.accepted == 3  # no verdict yet

    tally = await collector.close()

    assert tally.accepted == 2
    assert tally.num_examples == 40
    assert tally.rejected == {"not_finite": 1}
    assert collector.rejections["not_finite"] == 1
    # the refused sender's metrics no longer weigh in
    assert abs(tally.client_metrics()["accuracy"] - (10 * 0.9 + 30 * 0.7) / 40) < 1e-12
    np.testing.assert_allclose(collector.aggregator.result()["w"], 2.5)


async def test_closing_twice_does_not_settle_twice() -> None:
    collector = RoundCollector(job_id="j", aggregator=FedAvg(group=8))
    await collector.open(1, {"w": np.zeros(4)})
    await collector.offer(update("nan", np.nan, 5, 0.1))
    first = await collector.close()
    second = await collector.close()
    assert first is second
    assert second.rejected == {"not_finite": 1}


class Broken(FedAvg):
    def accept(self, update: Message) -> None:
        raise KeyError("a bug in a custom aggregator")


async def test_an_aggregator_that_crashes_refuses_the_update_with_a_reason_and_the_round_goes_on(
) -> None:
    collector = RoundCollector(job_id="j", aggregator=Broken())
    await collector.open(1, {"w": np.zeros(4)})
    await collector.offer(update("a", 1.0, 10, 0.9))
    await collector.wait(expected=1, timeout=5)  # answered: no waiting out the deadline
    tally = await collector.close()
    assert tally.accepted == 0
    assert tally.rejected == {"aggregator_error": 1}
    assert tally.senders == {"a"}


async def test_an_insider_claiming_a_trillion_examples_is_refused_and_fedavg_keeps_the_honest_mean(
) -> None:
    """Without a bound FedAvg would weigh the claim 10**12 : 40 and return about 1000."""
    collector = RoundCollector(job_id="j", aggregator=FedAvg(), max_examples=10_000)
    await collector.open(1, {"w": np.zeros(4)})
    await collector.offer(update("a", 1.0, 10, 0.9))
    assert not await collector.offer(update("insider", 1000.0, 10**12, 1.0))
    await collector.offer(update("b", 3.0, 30, 0.7))
    tally = await collector.close()
    assert (tally.accepted, tally.rejected) == (2, {"too_many_examples": 1})
    assert tally.num_examples == 40 and "insider" in tally.senders  # it answered, badly
    np.testing.assert_allclose(collector.aggregator.result()["w"], (1.0 * 10 + 3.0 * 30) / 40)


async def test_a_claim_at_the_bound_is_admitted() -> None:
    collector = RoundCollector(job_id="j", aggregator=FedAvg(), max_examples=10)
    await collector.open(1, {"w": np.zeros(4)})
    assert await collector.offer(update("a", 1.0, 10, 0.9))


def test_a_bound_that_is_not_a_positive_integer_is_refused_naming_the_setting() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigError, match=r"max_examples: expected an integer >= 1"):
            RoundCollector(job_id="j", aggregator=FedAvg(), max_examples=bad)  # type: ignore[arg-type]
