"""FedAvg is the sample-weighted mean, streamed in O(model) memory."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.aggregate.fold_kernel import fold_kernel
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message

Make = Callable[..., FedAvg]


@pytest.fixture(params=["numpy", "numba"])
def make(request: pytest.FixtureRequest) -> Callable[..., FedAvg]:
    """FedAvg with each fold: numpy's, and the compiled kernel (extra ``fast``)."""
    return partial(FedAvg, kernel=request.param)


def upd(sender: str, n: int, **params: np.ndarray) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender, params=params,
                          num_examples=n)


def test_matches_a_hand_computed_weighted_mean(make: Make) -> None:
    agg = make()
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


def test_does_not_modify_the_callers_arrays(make: Make) -> None:
    agg = make()
    agg.reset({"w": np.zeros(3)})
    w = np.ones(3)
    agg.accept(upd("a", 5, w=w))
    np.testing.assert_array_equal(w, np.ones(3))


@pytest.mark.parametrize(("message", "reason"), [
    (upd("a", 1, w=np.ones(4)), "wrong_shape"),
    (upd("a", 1, v=np.ones(3)), "wrong_names"),
    (upd("a", 0, w=np.ones(3)), "no_examples"),
])
def test_malformed_updates_are_refused_at_once_with_a_reason(
    make: Make, message: Message, reason: str
) -> None:
    agg = make()
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate) as err:
        agg.accept(message)
    assert err.value.reason == reason
    assert agg.accepted == 0


def test_a_nan_is_refused_when_its_group_is_folded_in(make: Make) -> None:
    agg = make(group=4)
    agg.reset({"w": np.zeros(3)})
    bad = upd("x", 1, w=np.array([1.0, np.nan, 0]))
    agg.accept(bad)  # held back with the group: no verdict yet
    agg.accept(upd("a", 2, w=np.ones(3)))
    late = agg.settle()
    assert [(msg.sender, exc.reason) for msg, exc in late] == [("x", "not_finite")]
    assert agg.accepted == 1
    np.testing.assert_array_equal(agg.result()["w"], np.ones(3))


def test_the_update_that_fills_a_group_is_refused_by_its_own_accept(make: Make) -> None:
    agg = make(group=2)
    agg.reset({"w": np.zeros(3)})
    agg.accept(upd("a", 1, w=np.ones(3)))
    with pytest.raises(RejectedUpdate, match="not_finite"):
        agg.accept(upd("x", 1, w=np.array([np.inf, 0, 0])))
    assert agg.settle() == []  # already reported: not twice
    assert agg.accepted == 1


def test_group_of_one_gives_every_verdict_at_accept(make: Make) -> None:
    agg = make(group=1)
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate, match="not_finite"):
        agg.accept(upd("x", 1, w=np.array([np.nan, 0, 0])))


def test_every_culprit_of_a_group_is_refused_and_the_rest_folded_in(make: Make) -> None:
    rng = np.random.default_rng(5)
    size = 5 * (1 << 16) + 3  # several blocks: the bad values sit in different ones
    rows = rng.standard_normal((6, size)).astype(np.float32)
    poisoned = rows.copy()
    poisoned[1, 7] = np.nan
    poisoned[4, size - 1] = -np.inf
    agg = make(group=6)
    agg.reset({"w": np.zeros(size, np.float32)})
    for i, row in enumerate(poisoned):
        try:
            agg.accept(upd(f"c{i}", i + 1, w=row))
        except RejectedUpdate as exc:
            assert i == 5 and exc.reason == "not_finite"  # only the group's last can raise
    refused = sorted(msg.sender for msg, _ in agg.settle())
    assert refused == ["c1", "c4"]
    keep = [0, 2, 3, 5]
    clean = make(group=6)
    clean.reset({"w": np.zeros(size, np.float32)})
    for i in keep:
        clean.accept(upd(f"c{i}", i + 1, w=rows[i]))
    np.testing.assert_array_equal(agg.result()["w"], clean.result()["w"])  # bit for bit


@pytest.mark.parametrize("group", [1, 3, 8, 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_grouping_and_threads_give_the_weighted_mean(
    make: Make, group: int, threads: int
) -> None:
    rng = np.random.default_rng(group * 10 + threads)
    size = (1 << 20) + 12_345  # above the size the fold is shared out over threads at
    rows = rng.standard_normal((11, size)).astype(np.float32)
    weights = rng.integers(1, 50, 11)
    model = {"w": np.zeros((size - 45, ), np.float32), "b": np.zeros((5, 9), np.float32)}
    agg = make(group=group, threads=threads)
    agg.reset(model)
    for i, row in enumerate(rows):
        agg.accept(upd(f"c{i}", int(weights[i]), w=row[:-45], b=row[-45:].reshape(5, 9)))
    out = agg.result()
    expect = np.average(rows.astype(np.float64), axis=0, weights=weights)
    np.testing.assert_allclose(out["w"], expect[:-45], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["b"], expect[-45:].reshape(5, 9), rtol=1e-5, atol=1e-6)


def test_a_large_model_is_folded_the_same_on_one_thread_and_on_several(
    make: Make,
) -> None:
    rng = np.random.default_rng(9)
    rows = rng.standard_normal((9, (1 << 20) + 1)).astype(np.float32)
    results = []
    for threads in (1, 2):
        agg = make(threads=threads)
        agg.reset({"w": np.zeros(rows.shape[1], np.float32)})
        for i, row in enumerate(rows):
            agg.accept(upd(f"c{i}", i + 1, w=row))
        results.append(agg.result()["w"])
    np.testing.assert_array_equal(results[0], results[1])


def test_a_large_model_is_folded_in_smaller_groups_so_held_updates_stay_bounded(
    make: Make,
) -> None:
    agg = make(group=8, max_held_mb=10)
    agg.reset({"w": np.zeros(1 << 20, np.float32)})  # 4 MiB updates: at most 2 held
    for i in range(2):
        agg.accept(upd(f"c{i}", 1, w=np.ones(1 << 20, np.float32)))
    agg.accept(upd("x", 1, w=np.full(1 << 20, np.nan, np.float32)))
    agg.accept(upd("c2", 1, w=np.ones(1 << 20, np.float32)))
    assert agg.accepted == 3  # the group of two (x, c2) was folded: x is already refused
    assert [msg.sender for msg, _ in agg.settle()] == ["x"]


def test_with_no_room_to_hold_updates_every_verdict_is_immediate(make: Make) -> None:
    agg = make(max_held_mb=0)
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate, match="not_finite"):
        agg.accept(upd("x", 1, w=np.array([np.nan, 0, 0])))


def test_reports_its_settings_in_errors() -> None:
    assert FedAvg(group=3).describe() == "FedAvg(group=3)"


def test_an_empty_round_has_no_result(make: Make) -> None:
    agg = make()
    agg.reset({"w": np.zeros(3)})
    with pytest.raises(RejectedUpdate, match="no_updates"):
        agg.result()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first chunk", "last chunk", "second tensor"])
def test_a_rejected_update_leaves_no_trace_wherever_the_bad_value_sits(
    make: Make, bad: float, where: str
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

    clean, attacked = make(), make()
    for agg in (clean, attacked):
        agg.reset(model)
    clean.accept(upd("a", 2, **good[0]))
    attacked.accept(upd("a", 2, **good[0]))
    attacked.accept(upd("x", 5, **poisoned))
    clean.accept(upd("b", 3, **good[1]))
    attacked.accept(upd("b", 3, **good[1]))
    assert [exc.reason for _, exc in attacked.settle()] == ["not_finite"]
    for name, value in clean.result().items():
        np.testing.assert_array_equal(attacked.result()[name], value)  # bit for bit


def test_finite_values_whose_weighted_sum_overflows_are_not_mistaken_for_nan(
    make: Make,
) -> None:
    agg = make()
    agg.reset({"w": np.zeros(4, np.float32)})
    huge = np.full(4, 3e38, np.float32)  # finite; the chunk's sum overflows float32
    agg.accept(upd("a", 1, w=huge))
    agg.accept(upd("b", 1, w=huge))
    assert agg.settle() == []
    assert agg.accepted == 2
    assert np.isinf(agg.result()["w"]).all()  # the sum overflowed; nobody is to blame


def test_the_compiled_and_numpy_folds_agree_to_rounding() -> None:
    rng = np.random.default_rng(11)
    rows = rng.standard_normal((10, (1 << 19) + 7)).astype(np.float32)
    results = {}
    for kernel in ("numpy", "numba"):
        agg = FedAvg(kernel=kernel)
        agg.reset({"w": np.zeros(rows.shape[1], np.float32)})
        for i, row in enumerate(rows):
            agg.accept(upd(f"c{i}", i + 1, w=row))
        results[kernel] = agg.result()["w"]
    np.testing.assert_allclose(results["numba"], results["numpy"], rtol=1e-5, atol=1e-6)


def test_an_integer_buffer_is_averaged_beside_compiled_float_tensors() -> None:
    agg = FedAvg(kernel="numba")
    agg.reset({"w": np.zeros(4, np.float32), "steps": np.zeros((), np.int64)})
    agg.accept(upd("a", 1, w=np.ones(4, np.float32), steps=np.array(10)))
    agg.accept(upd("b", 3, w=np.full(4, 5, np.float32), steps=np.array(30)))
    out = agg.result()
    np.testing.assert_allclose(out["w"], 4.0)
    assert float(out["steps"]) == 25.0


def test_an_unknown_kernel_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="kernel must be one of auto, numba, numpy"):
        FedAvg(kernel="cuda")


def test_asking_for_the_compiled_fold_without_numba_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # as if it were not installed
    fold_kernel.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"foedus\[fast\]"):
            FedAvg(kernel="numba")
    finally:
        fold_kernel.cache_clear()


def _round(agg: FedAvg, model: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    agg.reset(model)
    for i in range(3):
        agg.accept(upd(f"c{i}", i + 1, w=rng.standard_normal(1000).astype(np.float32)))
    return agg.result()


def test_a_mean_the_caller_still_holds_is_never_overwritten(make: Make) -> None:
    agg = make()
    model = {"w": np.zeros(1000, np.float32)}
    kept = [_round(agg, model, seed) for seed in range(4)]  # every result still referenced
    views = [_round(agg, model, seed)["w"][:10] for seed in range(4, 8)]  # only a view kept
    for seed, result in enumerate(kept):
        np.testing.assert_array_equal(result["w"], _round(make(), model, seed)["w"])
    for seed, view in enumerate(views, start=4):
        np.testing.assert_array_equal(view, _round(make(), model, seed)["w"][:10])


def test_a_mean_nobody_holds_any_more_is_written_over_instead_of_new_memory() -> None:
    agg = FedAvg()
    model = {"w": np.zeros(1000, np.float32)}
    first = _round(agg, model, 0)
    buffer = weakref.ref(first["w"].base)
    del first  # the caller let go of round 1's model
    _round(agg, model, 1)  # this round's mean is still referenced while it is returned
    third = _round(agg, model, 2)
    assert buffer() is not None and third["w"].base is buffer()
    np.testing.assert_array_equal(third["w"], _round(FedAvg(), model, 2)["w"])


def test_an_update_unaligned_in_its_buffer_is_averaged_beside_aligned_ones() -> None:
    values = np.arange(1, 6, dtype=np.float32)
    raw = b"\0" + values.tobytes()  # a float32 array starting one byte into its buffer
    unaligned = np.frombuffer(raw, dtype=np.float32, offset=1)
    assert not unaligned.flags.aligned
    agg = FedAvg(kernel="numba")
    agg.reset({"w": np.zeros(5, np.float32)})
    agg.accept(upd("a", 1, w=unaligned))
    agg.accept(upd("b", 1, w=values * 3))
    np.testing.assert_allclose(agg.result()["w"], values * 2)


def test_without_numba_a_large_model_is_folded_with_numpy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import foedus.aggregate.fedavg as fedavg_module

    monkeypatch.setattr(fedavg_module, "kernel_available", lambda: False)
    monkeypatch.setattr(fedavg_module, "fold_kernel", _no_numba)
    rows = np.random.default_rng(2).standard_normal((3, 1 << 20)).astype(np.float32)
    agg = FedAvg()  # kernel="auto"
    agg.reset({"w": np.zeros(1 << 20, np.float32)})
    for i, row in enumerate(rows):
        agg.accept(upd(f"c{i}", i + 1, w=row))
    expect = np.average(rows.astype(np.float64), axis=0, weights=[1, 2, 3])
    np.testing.assert_allclose(agg.result()["w"], expect, rtol=1e-5, atol=1e-6)


def _no_numba() -> None:
    raise AssertionError("FedAvg asked for the compiled fold although numba is missing")


# ---- the fast fold against the reference written as the paper's formula ----------------------
DTYPES = [np.float32, np.float64, np.float16]


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_reference_fedavg_over_random_updates_dtypes_and_shapes(
    make: Make, seed: int
) -> None:
    from foedus.aggregate.reference import ReferenceFedAvg

    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in rng.integers(1, 6, size=rng.integers(0, 4)))
              for _ in range(4)] + [(70_000,)]  # and one tensor longer than a fold block
    start = {f"p{i}": np.zeros(shape, DTYPES[i % len(DTYPES)]) for i, shape in enumerate(shapes)}
    start["count"] = np.zeros(3, np.int64)  # integer parameters are averaged too, then cast
    clients = int(rng.integers(1, 30))  # more than one fold group, and single-update rounds
    updates = [
        upd(f"c{k}", int(rng.integers(1, 500)),
            **{name: (rng.normal(size=a.shape) * 10).astype(a.dtype) for name, a in start.items()})
        for k in range(clients)
    ]
    fast, oracle = make(group=int(rng.integers(1, 9))), ReferenceFedAvg()
    for agg in (fast, oracle):
        agg.reset(start)
        for u in updates:
            agg.accept(u)
    assert fast.settle(final=True) == []
    got, want = fast.result(), oracle.result()
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        if value.dtype.kind == "f":
            # the fast fold sums in float32 for float32/float16 models: a few ulps of float32
            rtol = 1e-12 if value.dtype == np.float64 else 2e-6
            # a mean near zero of values near 10 keeps an absolute error of the inputs' size
            # times a few ulps, not a relative one (measured: 6e-16 on a mean of 1e-4)
            atol = {np.dtype(np.float64): 1e-13 * 10,
                    np.dtype(np.float16): float(np.finfo(np.float16).eps) * 10}.get(value.dtype, 0)
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol)
        else:
            np.testing.assert_allclose(got[name], value, atol=1)  # rounding of the cast


def test_the_reference_is_the_weighted_mean_by_hand() -> None:
    from foedus.aggregate.reference import ReferenceFedAvg

    agg = ReferenceFedAvg()
    agg.reset({"w": np.zeros(2)})
    agg.accept(upd("a", 1, w=np.array([0.0, 4.0])))
    agg.accept(upd("b", 3, w=np.array([4.0, 0.0])))
    np.testing.assert_array_equal(agg.result()["w"], [3.0, 1.0])
