"""FedAvg is the sample-weighted mean, streamed in O(model) memory."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.core.errors import RejectedUpdate
from foedus.core.message import Kind, Message


def upd(sender: str, n: int, **params: np.ndarray) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender, params=params,
                          num_examples=n)


def test_matches_a_hand_computed_weighted_mean() -> None:
    agg = FedAvg()
    agg.reset({"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)})
    agg.accept(upd("a", 1, w=np.array([[1, 2], [3, 4]], np.float32),
                   b=np.array([0, 1], np.float32)))
    agg.accept(upd("b", 3, w=np.array([[5, 6], [7, 8]], np.float32),
                   b=np.array([4, 1], np.float32)))
    out = agg.result()
    # (1*1 + 3*5)/4 = 4, (2 + 18)/4 = 5, (3 + 21)/4 = 6, (4 + 24)/4 = 7; b: (0+12)/4 = 3, 1
    np.testing.assert_allclose(out["w"], [[4, 5], [6, 7]])
    np.testing.assert_allclose(out["b"], [3, 1])
    assert out["w"].dtype == np.float32


def test_does_not_modify_the_callers_arrays() -> None:
    agg = FedAvg()
    agg.reset({"w": np.zeros(3)})
    w = np.ones(3)
    agg.accept(upd("a", 5, w=w))
    np.testing.assert_array_equal(w, np.ones(3))


@pytest.mark.parametrize(("message", "reason"), [
    (upd("a", 1, w=np.ones(4)), "wrong_shape"),
    (upd("a", 1, v=np.ones(3)), "wrong_names"),
    (upd("a", 1, w=np.array([1.0, np.inf, 0])), "not_finite"),
    (upd("a", 0, w=np.ones(3)), "no_examples"),
])
def test_invalid_updates_are_rejected_with_a_reason(message: Message, reason: str) -> None:
    agg = FedAvg()
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate) as err:
        agg.accept(message)
    assert err.value.reason == reason
    assert agg.accepted == 0


def test_an_empty_round_has_no_result() -> None:
    agg = FedAvg()
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate, match="no_updates"):
        agg.result()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first chunk", "last chunk", "second tensor"])
def test_a_rejected_update_leaves_no_trace_wherever_the_bad_value_sits(
    bad: float, where: str
) -> None:
    # Large enough to span many cache-sized blocks; the bad value may sit in the last one,
    # or in a later tensor than one that is fine.
    rng = np.random.default_rng(3)
    size = 3 * (1 << 17) + 17
    model = {"w": np.zeros(size, np.float32), "b": np.zeros(5, np.float32)}
    good = [{"w": rng.standard_normal(size, dtype=np.float32),
             "b": rng.standard_normal(5, dtype=np.float32)} for _ in range(2)]
    poisoned = {"w": rng.standard_normal(size, dtype=np.float32) * 1e3,
                "b": rng.standard_normal(5, dtype=np.float32)}
    if where == "second tensor":
        poisoned["b"][4] = bad
    else:
        poisoned["w"][0 if where == "first chunk" else size - 1] = bad

    clean, attacked = FedAvg(), FedAvg()
    for agg in (clean, attacked):
        agg.reset(model)
    clean.accept(upd("a", 2, **good[0]))
    attacked.accept(upd("a", 2, **good[0]))
    with pytest.raises(RejectedUpdate) as info:
        attacked.accept(upd("x", 5, **poisoned))
    assert info.value.reason == "not_finite"
    clean.accept(upd("b", 3, **good[1]))
    attacked.accept(upd("b", 3, **good[1]))
    for name, value in clean.result().items():
        np.testing.assert_array_equal(attacked.result()[name], value)  # bit for bit


def test_finite_values_whose_weighted_sum_overflows_are_not_mistaken_for_nan() -> None:
    agg = FedAvg()
    agg.reset({"w": np.zeros(4, np.float32)})
    huge = np.full(4, 3e38, np.float32)  # finite; the chunk's sum overflows float32
    agg.accept(upd("a", 1, w=huge))
    assert agg.accepted == 1
