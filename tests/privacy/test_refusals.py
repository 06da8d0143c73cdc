"""A server-side filter's refusal is a counted refusal of the round, never a traceback.

A central-DP job with zstd runs in process: the server graph is the real one (downlink, zstd
decoder, DP receiver, server), the clients are scripted on the real topics. Besides two honest
clients, one client sends an update that was never clipped (compressed only, so it decodes and
reaches the DP receiver without its clipping tag) and one a zstd frame that does not decode
(refused by the first filter, its refusal passes the DP receiver untouched). Each round must
record both refusals under their reasons, log each in one line, and go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.compress.lossless import ZstdStage
from foedus.core.filter import Chain
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.privacy.dp import CentralDPStage
from foedus.roles.server import ServerPod
from foedus.topology.centralized import server_graph, topics
from foedus.transport.base import Subscription
from foedus.transport.local import LocalTransport

JOB = "dp-refusals"
ROUNDS = 3
Behaviour = Callable[[Message], list[Message]]


def honest(stage: CentralDPStage, zstd: ZstdStage, sender: str) -> Behaviour:
    """Clips (DP client half) then compresses, as the job's pipeline says."""
    clip, compress = stage.client(), zstd.client()
    assert clip is not None and compress is not None
    pipeline = Chain(clip, compress)

    def behave(model: Message) -> list[Message]:
        pipeline.handler("model")(model)
        update = model.reply(Kind.UPDATE, sender, num_examples=5,
                             params={"w": np.asarray(model.params["w"]) + 0.1})
        out = pipeline(update)
        assert out is not None
        return [out]

    return behave


def naked(zstd: ZstdStage) -> Behaviour:
    """An update compressed but never clipped: it decodes, then the DP receiver refuses it."""
    compress = zstd.client()
    assert compress is not None

    def behave(model: Message) -> list[Message]:
        out = compress(model.reply(Kind.UPDATE, "naked", num_examples=5,
                                   params={"w": np.full(4, 1000.0)}))
        assert out is not None
        return [out]

    return behave


def garbled(stage: CentralDPStage, zstd: ZstdStage) -> Behaviour:
    """A correctly clipped and compressed update whose zstd body is then damaged."""
    inner = honest(stage, zstd, "garbled")

    def behave(model: Message) -> list[Message]:
        [out] = inner(model)
        [(name, body)] = out.params.items()
        return [out.replace(params={name: body[: len(body) // 2]})]

    return behave


async def scripted(transport: LocalTransport, sub: Subscription, behaviour: Behaviour) -> None:
    async for payload in sub:
        model = decode(payload)
        if model.kind is Kind.CONTROL:
            return
        for out in behaviour(model):
            await transport.publish(topics(JOB).updates, encode(out), key=out.sender)


async def test_filter_refusals_are_counted_by_reason_in_every_round_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dp = CentralDPStage(clients_per_round=2, clip_norm=1.0, noise_multiplier=0.01, seed=0)
    zstd = ZstdStage()
    server = ServerPod(job_id=JOB, initial_params={"w": np.zeros(4)}, aggregator=FedAvg(),
                       rounds=ROUNDS, expected_clients=4, min_clients=2, round_timeout=10)
    server.broadcast_meta.append(dp.model_meta)
    receivers = [zstd.server(), dp.server()]  # the reverse of the clients' order
    transport = LocalTransport()
    behaviours = [honest(dp, zstd, "a"), honest(dp, zstd, "b"), naked(zstd), garbled(dp, zstd)]
    tasks = []
    for behaviour in behaviours:
        sub = await transport.subscribe(topics(JOB).model)
        tasks.append(asyncio.create_task(scripted(transport, sub, behaviour)))
    runtime = Runtime(server_graph(server, transport,
                                   filters=[f for f in receivers if f is not None]))
    with caplog.at_level(logging.WARNING):
        await runtime.start()
        await asyncio.wait_for(runtime.wait(), 30)
        await runtime.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await transport.close()

    assert [r.round for r in server.history] == [1, 2, 3]  # later rounds went on
    for record in server.history:
        assert record.status == "ok" and record.accepted == 2
        assert record.rejected == {"not_private": 1, "bad_encoding": 1}
        assert record.missing_clients == 0  # a refused sender answered: no wait for it
    assert not runtime.stats.failures and not runtime.stats.refused
    assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("not_private" in line for line in lines) == ROUNDS
    assert sum("bad_encoding" in line for line in lines) == ROUNDS
    # the naked update's 1000s never reached the model: honest steps of 0.1 plus DP noise
    assert float(np.max(np.abs(server.params["w"]))) < 1.0
