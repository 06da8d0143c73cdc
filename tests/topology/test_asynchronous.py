"""Asynchronous FL (FedBuff): staleness-weighted buffered updates, clients at their own pace."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import numpy as np
import pytest

from foedus.codec import encode
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.async_server import AsyncServerPod, StalenessBuffer, polynomial_staleness
from foedus.runner import run_job
from foedus.testing import wait_until
from foedus.topology.asynchronous import run_asynchronous
from foedus.topology.centralized import server_graph, topics
from foedus.transport.local import LocalTransport
from tests.topology.helpers import digits, widen_executor


def update(sender: str, version: int, value: float) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=version, sender=sender,
                          params={"w": np.full(2, value)}, num_examples=10)


def test_staleness_weight_is_one_over_sqrt_one_plus_staleness() -> None:
    assert [polynomial_staleness(s) for s in (0, 1, 3, 8)] == [1.0, 1 / math.sqrt(2), 0.5,
                                                                1 / 3]


def test_buffer_applies_the_mean_staleness_weighted_delta_by_hand() -> None:
    buf = StalenessBuffer({"w": np.zeros(2)}, buffer_size=2, max_staleness=3)
    assert buf.accept(update("a", 0, 1.0)) is False
    assert buf.accept(update("b", 0, 3.0)) is True
    np.testing.assert_allclose(buf.apply()["w"], 2.0)  # (1*1 + 1*3) / 2; version 1
    # "c" trained from version 0 (staleness 1): delta 4 - 0, weight 1/sqrt(2)
    # "d" trained from version 1 (staleness 0): delta 5 - 2, weight 1
    buf.accept(update("c", 0, 4.0))
    buf.accept(update("d", 1, 5.0))
    assert [(s, w) for _, s, w in buf.buffered] == [(1, 1 / math.sqrt(2)), (0, 1.0)]
    expected = 2.0 + (4.0 / math.sqrt(2) + 3.0) / 2
    np.testing.assert_allclose(buf.apply()["w"], expected)
    assert buf.version == 2


def test_server_learning_rate_scales_the_step() -> None:
    buf = StalenessBuffer({"w": np.ones(2)}, buffer_size=1, server_lr=0.5)
    buf.accept(update("a", 0, 3.0))
    np.testing.assert_allclose(buf.apply()["w"], 1.0 + 0.5 * 2.0)


def test_too_stale_and_future_versions_are_rejected_with_reasons() -> None:
    buf = StalenessBuffer({"w": np.zeros(2)}, buffer_size=1, max_staleness=1)
    for value in (1.0, 2.0):
        buf.accept(update("a", buf.version, value))
        buf.apply()
    with pytest.raises(RejectedUpdate) as stale:
        buf.accept(update("slow", 0, 9.0))  # staleness 2 > 1
    with pytest.raises(RejectedUpdate) as future:
        buf.accept(update("odd", 7, 9.0))
    with pytest.raises(RejectedUpdate) as nan:
        buf.accept(update("nan", 2, float("nan")))
    assert (stale.value.reason, future.value.reason, nan.value.reason) == (
        "stale_round", "stale_round", "not_finite")
    assert buf.buffered == []  # nothing of a rejected update got in


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="buffer_size"):
        StalenessBuffer({"w": np.zeros(2)}, buffer_size=0)
    with pytest.raises(ConfigError, match="server_lr"):
        StalenessBuffer({"w": np.zeros(2)}, buffer_size=1, server_lr=-1)


class SlowClient(AsyncClientPod):
    """An asynchronous client on a slower machine: each local round takes ``delay`` longer."""

    def __init__(self, delay: float, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.delay = delay

    def train(self, model_msg: Message) -> Message:
        time.sleep(self.delay)
        return super().train(model_msg)


async def test_clients_of_3x_different_speeds_converge_without_waiting_for_each_other() -> None:
    widen_executor()
    # a constant step: the default "optimal" schedule's large steps make accuracy swing by
    # +-0.1 between versions, which would test the schedule, not the buffering
    data = digits(6, learning_rate="constant", eta0=0.02)
    # local training time, 3x apart, long enough that the 3x holds when a busy machine slows
    # the arithmetic (sleeps the same, computing not)
    delays = [0.08, 0.08, 0.16, 0.16, 0.24, 0.24]
    server = AsyncServerPod(
        job_id="fedbuff", initial_params=data.model().get_params(), versions=25,
        buffer_size=3, max_staleness=8,
        evaluate=lambda p: {"accuracy": data.accuracy(p)}, timeout=60,
    )
    transport = LocalTransport()
    clients = [
        SlowClient(d, client_id=f"c{i}", model=data.model(), data=share)
        for i, (d, share) in enumerate(zip(delays, data.shares, strict=True))
    ]
    history = await run_asynchronous(server, transport, [(c, transport, ()) for c in clients])
    await transport.close()
    assert len(history) == 25
    assert np.mean([r.metrics["accuracy"] for r in history[-5:]]) > 0.85
    contributions = Counter(s for r in history for s in r.senders)
    assert contributions["c0"] + contributions["c1"] > contributions["c4"] + contributions["c5"]
    assert any(s > 0 for r in history for s in r.staleness)  # nobody waited for a barrier
    assert not server.rejections


async def test_a_server_that_makes_no_new_version_in_time_stops_and_says_why() -> None:
    transport = LocalTransport()
    server = AsyncServerPod(job_id="j", initial_params={"w": np.zeros(2)}, versions=3,
                            buffer_size=1, version_timeout=0.2, participants=["a"])
    runtime = Runtime(server_graph(server, transport))
    await runtime.start()
    await transport.publish(topics("j").updates, encode(update("a", 0, 1.0)))  # version 1
    await asyncio.wait_for(runtime.wait(), 10)  # then nobody: it ends on its own
    await runtime.stop()
    await transport.close()
    assert [r.version for r in server.history] == [1]
    assert server.stop_reason == ("no new version within 0.2s: 1 of 3 versions made, "
                                  "0 of 1 updates buffered for the next")


async def test_the_wait_for_a_version_starts_once_a_client_is_heard_from() -> None:
    # clients of another process may start long after the server: until the first update only
    # the overall timeout bounds the wait (a synchronous server would go on to its next round)
    transport = LocalTransport()
    server = AsyncServerPod(job_id="j", initial_params={"w": np.zeros(2)}, versions=1,
                            buffer_size=1, version_timeout=0.05, participants=["a"])
    runtime = Runtime(server_graph(server, transport))
    await runtime.start()
    late = time.monotonic() + 0.3  # six version deadlines before the client's first update
    await wait_until(lambda: time.monotonic() >= late, timeout=5, interval=0.05,
                     what="the late client's start")
    await transport.publish(topics("j").updates, encode(update("a", 0, 1.0)))
    await asyncio.wait_for(runtime.wait(), 10)
    await runtime.stop()
    await transport.close()
    assert server.stop_reason is None and [r.version for r in server.history] == [1]


async def test_an_async_job_that_made_no_version_is_a_failed_job() -> None:
    # a deadline no buffer can fill in time: it used to "finish" 0 rounds and exit 0
    spec = JobSpec.from_dict({
        "job_id": "slow", "rounds": 3, "round_timeout": 1e-6, "clients": {"count": 4},
        "data": {"dataset": "digits", "partition": "iid"},
        "topology": {"type": "async", "params": {"buffer_size": 2}}})
    result = await run_job(spec)
    assert result.history == []
    assert result.failure is not None and result.failure.startswith(
        "stopped before round 1: ")
    assert "0 of 3 versions made" in result.failure
