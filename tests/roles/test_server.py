"""The server's round: quorum, deadline, rejections with reasons, FedAvg, checkpoints.

Clients here are scripted: they read the real model topic and publish real encoded updates on
the in-process transport, so the whole path (links, codec, server) is exercised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.checkpoint import Checkpointer
from foedus.roles.server import ServerPod
from foedus.topology.centralized import server_graph, topics
from foedus.transport.base import Subscription
from foedus.transport.local import LocalTransport

JOB = "job1"
Behaviour = Callable[[Message], Awaitable[list[Message]]]


def update(model: Message, sender: str, value: float, n: int = 1, **kw: object) -> Message:
    params = {k: np.full_like(v, value) for k, v in model.params.items()}
    return model.reply(Kind.UPDATE, sender, params=params, num_examples=n, **kw)  # type: ignore[arg-type]


async def scripted_client(
    transport: LocalTransport, sub: Subscription, behaviour: Behaviour
) -> None:
    """Answer each model on ``sub`` (subscribed before the server starts) as ``behaviour`` says."""
    async for payload in sub:
        model = decode(payload)
        if model.kind is Kind.CONTROL:
            return
        for out in await behaviour(model):
            await transport.publish(topics(JOB).updates, encode(out), key=out.sender)


def make_server(rounds: int = 1, **kw: object) -> ServerPod:
    options: dict = {"expected_clients": 3, "min_clients": 2, "round_timeout": 0.5} | kw
    return ServerPod(
        job_id=JOB, initial_params={"w": np.zeros(4)}, aggregator=FedAvg(), rounds=rounds,
        **options,
    )


async def run(server: ServerPod, behaviours: list[Behaviour]) -> Runtime:
    transport = LocalTransport()
    clients = []
    for b in behaviours:  # subscribed here, so every client is listening before round 1
        sub = await transport.subscribe(topics(JOB).model)
        clients.append(asyncio.create_task(scripted_client(transport, sub, b)))
    runtime = Runtime(server_graph(server, transport))
    await runtime.start()
    await asyncio.wait_for(runtime.wait(), 20)
    await runtime.stop()
    await asyncio.wait_for(asyncio.gather(*clients), 5)
    await transport.close()
    return runtime


def answers(value: float, n: int = 1, name: str = "") -> Behaviour:
    async def behave(model: Message) -> list[Message]:
        return [update(model, name, value, n)]

    return behave


async def silent(model: Message) -> list[Message]:
    return []


async def test_fedavg_result_is_the_sample_weighted_mean() -> None:
    server = make_server()
    await run(server, [answers(1.0, 1, "a"), answers(2.0, 3, "b"), answers(10.0, 6, "c")])
    expected = (1.0 * 1 + 2.0 * 3 + 10.0 * 6) / 10
    np.testing.assert_allclose(server.params["w"], np.full(4, expected))
    assert server.history[0].accepted == 3


async def test_a_client_that_never_answers_does_not_stall_the_round() -> None:
    server = make_server(round_timeout=0.4)
    began = time.perf_counter()
    await run(server, [answers(1.0, 1, "a"), answers(3.0, 1, "b"), silent])
    record = server.history[0]
    assert (record.status, record.accepted, record.missing_clients) == ("ok", 2, 1)
    assert 0.4 <= time.perf_counter() - began < 5
    np.testing.assert_allclose(server.params["w"], 2.0)


async def test_without_quorum_the_global_model_is_kept() -> None:
    server = make_server(round_timeout=0.2)
    await run(server, [answers(5.0, 1, "a"), silent, silent])
    assert server.history[0].status == "no_quorum"
    np.testing.assert_array_equal(server.params["w"], np.zeros(4))


async def test_rejections_are_counted_by_reason_and_do_not_end_the_round_early() -> None:
    async def hostile(model: Message) -> list[Message]:
        good = update(model, "evil", 1.0)
        return [
            good,
            update(model, "evil", 100.0),  # duplicate sender
            update(model, "stale", 1.0).replace(round=model.round - 1),
            model.reply(Kind.UPDATE, "shape", params={"w": np.ones(5)}, num_examples=1),
            model.reply(Kind.UPDATE, "nan", params={"w": np.full(4, np.nan)}, num_examples=1),
        ]

    server = make_server(expected_clients=4, min_clients=1, round_timeout=0.5)
    await run(server, [hostile, answers(3.0, 1, "honest")])
    record = server.history[0]
    assert record.rejected == {"duplicate": 1, "stale_round": 1, "wrong_shape": 1,
                               "not_finite": 1}
    assert record.accepted == 2
    np.testing.assert_allclose(server.params["w"], 2.0)  # the duplicate's 100 never counted


async def test_a_failed_client_is_skipped_and_recorded() -> None:
    async def crashes(model: Message) -> list[Message]:
        return [model.reply(Kind.ERROR, "broken", error="MemoryError: out of memory")]

    server = make_server()
    await run(server, [answers(1.0, 1, "a"), answers(1.0, 1, "b"), crashes])
    record = server.history[0]
    assert record.failed_clients == ["broken"]
    assert record.accepted == 2 and record.missing_clients == 0


async def test_messages_for_another_job_are_rejected_at_the_link() -> None:
    async def confused(model: Message) -> list[Message]:
        return [update(model, "x", 1.0).replace(job_id="other-job")]

    server = make_server(round_timeout=0.3)
    runtime = await run(server, [answers(1.0, 1, "a"), answers(1.0, 1, "b"), confused])
    assert runtime.graph.pods["updates_in"].rejected["wrong_job"] == 1  # type: ignore[attr-defined]


async def test_server_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    first = make_server(rounds=2, checkpointer=Checkpointer(tmp_path, JOB))
    await run(first, [answers(1.0, 1, "a"), answers(1.0, 1, "b"), answers(1.0, 1, "c")])
    assert [r.round for r in first.history] == [1, 2]

    seen_rounds: list[int] = []

    async def record_round(model: Message) -> list[Message]:
        seen_rounds.append(model.round)
        return [update(model, "a", 4.0)]

    second = make_server(rounds=3, min_clients=1, round_timeout=0.3,
                         checkpointer=Checkpointer(tmp_path, JOB))
    await run(second, [record_round])
    assert seen_rounds == [3]
    assert [r.round for r in second.history] == [1, 2, 3]
    np.testing.assert_allclose(second.params["w"], 4.0)
