"""Hostile input published to a live server's updates topic on a real MQTT broker.

A server runs with two honest clients and an attacker on the same broker. Every round the
attacker publishes one of each kind of bad input: bytes that are truncated, corrupted, garbage
or oversized (for the link and for the transport); messages for another job, of the wrong kind,
with filters not undone, for a stale or future round, from an unknown sender; replays of honest
messages (same message id) from this and the previous round; and, under the names of insiders
(participants turned malicious), updates with NaN, Inf, the wrong shape, the wrong dtype, missing
arrays or no examples. Each one must be refused with its own reason, logged, and counted, while
the server completes every round and its global model is exactly the mean of the honest updates.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.server import ServerPod
from foedus.topology.centralized import server_graph, topics
from foedus.transport.link import Downlink
from foedus.transport.mqtt import MqttTransport
from tests.transport.mqtt_fixtures import Mosquitto

pytestmark = pytest.mark.integration

ROUNDS = 3
HONEST = {"client-000": 1.0, "client-001": 3.0}  # the global model must end at their mean, 2.0
INSIDERS = [f"client-{i:03d}" for i in range(2, 8)]
LINK_LIMIT = 128 * 1024  # the server's link refuses messages above this
TRANSPORT_LIMIT = 256 * 1024  # the server's MQTT subscription refuses payloads above this
INITIAL = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def _update(job: str, rnd: int, sender: str, value: float, n: int = 1,
            params: dict[str, np.ndarray] | None = None, **kw: Any) -> Message:
    body = params if params is not None else {k: np.full_like(v, value) for k, v in INITIAL.items()}
    return Message.create(Kind.UPDATE, job_id=job, round=rnd, sender=sender, params=body,
                          num_examples=n, **kw)


async def honest_client(port: int, job: str, name: str, ready: asyncio.Event) -> None:
    transport = MqttTransport(port=port)
    try:
        sub = await transport.subscribe(topics(job).model)  # returns once the broker confirmed
        ready.set()
        async for payload in sub:
            model = decode(payload)
            if model.kind is Kind.CONTROL:
                return
            update = model.reply(Kind.UPDATE, name, num_examples=1, params={
                k: np.full_like(v, HONEST[name]) for k, v in model.params.items()})
            await transport.publish(topics(job).updates, encode(update), key=name)
    finally:
        await transport.close()


def outsider_payloads(job: str, rnd: int) -> list[tuple[str, bytes]]:
    """(expected reason, payload) for everything that needs no knowledge of honest traffic."""
    valid = encode(_update(job, rnd, "mallory", 1.0))
    flipped = bytearray(valid)
    flipped[-5] ^= 0xFF
    big = {"w": np.zeros(LINK_LIMIT // 4 + 1000, np.float32)}
    return [
        ("undecodable", valid[:-9]),  # truncated
        ("undecodable", bytes(flipped)),  # corrupted in transit
        ("undecodable", b"\x00garbage" * 50),  # not a foedus message at all
        ("undecodable", encode(_update(job, rnd, "client-002", 0, params=big))),  # too big
        ("oversized", bytes(TRANSPORT_LIMIT + 10)),  # refused by the transport, in one chunk
        ("wrong_job", encode(_update("another-job", rnd, "client-000", 1.0))),
        ("wrong_kind", encode(Message.create(Kind.MODEL, job_id=job, round=rnd,
                                             sender="client-002", params=INITIAL))),
        ("undecoded", encode(_update(job, rnd, "client-002", 1.0, trail=("zstd",)))),
        ("stale_round", encode(_update(job, rnd + 5, "client-002", 1.0))),
        ("stale_round", encode(_update(job, rnd - 1, "client-003", 1.0))),
        ("unknown_sender", valid),  # well formed, but mallory is no participant
    ]


def insider_payloads(job: str, rnd: int) -> list[tuple[str, bytes]]:
    """Bad updates under participants' own names: each is its sender's one answer."""
    nan = {k: np.full_like(v, np.nan) for k, v in INITIAL.items()}
    inf = {k: np.full_like(v, np.inf) for k, v in INITIAL.items()}
    shape = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}
    dtype = {k: np.zeros(v.shape, np.complex128) + 1j for k, v in INITIAL.items()}
    names = {"w": np.zeros((4, 3), np.float32)}
    bad = [("not_finite", nan, 1), ("not_finite", inf, 1), ("wrong_shape", shape, 1),
           ("wrong_dtype", dtype, 1), ("wrong_names", names, 1), ("no_examples", None, 0)]
    return [(reason, encode(_update(job, rnd, who, 5.0, n=n, params=params)))
            for who, (reason, params, n) in zip(INSIDERS, bad, strict=True)]


def claimed_sender(payload: bytes) -> str:
    """The sender a payload names, or an insider's name for bytes that name none."""
    try:
        return decode(payload, max_size=len(payload) + 1).sender
    except Exception:
        return INSIDERS[0]


async def attacker(port: int, job: str, expected: Counter[str], ready: asyncio.Event) -> None:
    """Sniffs the shared topics (no ACLs: anyone may read and write) and attacks every round."""
    transport = MqttTransport(port=port, max_payload=4 * TRANSPORT_LIMIT)
    t = topics(job)
    honest: dict[int, list[bytes]] = {}
    seen = asyncio.Event()
    sniffing = asyncio.Event()

    async def sniff() -> None:
        sub = await transport.subscribe(t.updates)
        sniffing.set()
        async for payload in sub:
            try:
                msg = decode(payload)
            except Exception:
                continue
            if msg.sender in HONEST and msg.header.job_id == job:
                honest.setdefault(msg.round, []).append(payload)
                seen.set()

    sniffer = asyncio.create_task(sniff())
    try:
        models = await transport.subscribe(t.model)
        await asyncio.wait_for(sniffing.wait(), 30)
        ready.set()
        async for payload in models:
            model = decode(payload)
            if model.kind is Kind.CONTROL:
                return
            rnd = model.round
            attacks = outsider_payloads(job, rnd)
            while len(honest.get(rnd, [])) < len(HONEST):  # replay what honest clients sent
                seen.clear()
                await asyncio.wait_for(seen.wait(), 30)
            attacks += [("replayed", p) for p in honest[rnd]]
            attacks += [("replayed", p) for p in honest.get(rnd - 1, [])]
            attacks += insider_payloads(job, rnd)
            for reason, payload in attacks:
                expected[reason] += 1  # keyed by the name it claims, as a forger would: a
                # payload keyed by a non-participant is dropped before decoding (see test_flood)
                await transport.publish(t.updates, payload, key=claimed_sender(payload))
    finally:
        sniffer.cancel()
        await transport.close()


async def test_every_hostile_input_is_refused_counted_and_logged_while_rounds_complete(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    job = f"hostile-{uuid.uuid4().hex[:8]}"
    participants = [*HONEST, *INSIDERS]
    server = ServerPod(
        job_id=job, initial_params=INITIAL, aggregator=FedAvg(), rounds=ROUNDS,
        expected_clients=len(participants), min_clients=2, round_timeout=30,
        participants=participants,
    )
    transport = MqttTransport(port=mosquitto.plain_port, max_payload=TRANSPORT_LIMIT)
    graph = server_graph(server, transport, max_message_size=LINK_LIMIT)
    downlink = graph.pods["updates_in"]
    assert isinstance(downlink, Downlink)
    expected: Counter[str] = Counter()
    port = mosquitto.plain_port
    ready = [asyncio.Event() for _ in range(len(HONEST) + 1)]
    tasks = [asyncio.create_task(honest_client(port, job, name, r))
             for name, r in zip(HONEST, ready[:-1], strict=True)]
    tasks.append(asyncio.create_task(attacker(port, job, expected, ready[-1])))
    try:
        # everyone subscribed before round 1
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
        async with Runtime(graph) as runtime:
            await asyncio.wait_for(runtime.wait(), 120)
            transport_rejected = dict(downlink._sub.rejected)  # type: ignore[union-attr]
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for task in tasks:
            task.cancel()
        await transport.close()

    # the server stayed up and every round folded in exactly the honest updates
    assert [(r.round, r.status, r.accepted) for r in server.history] == [
        (r, "ok", 2) for r in range(1, ROUNDS + 1)
    ]
    for value in server.params.values():
        np.testing.assert_allclose(value, 2.0)
    # every bad input was refused by exactly one layer, under its own reason
    refused = Counter(server.rejections) + Counter(downlink.rejected) + Counter(transport_rejected)
    assert refused == expected
    assert set(expected) >= {"undecodable", "oversized", "wrong_job", "wrong_kind", "undecoded",
                             "stale_round", "unknown_sender", "replayed", "not_finite",
                             "wrong_shape", "wrong_dtype", "wrong_names", "no_examples"}
    per_round = [sum(r.rejected.values()) for r in server.history]
    assert sum(per_round) == sum(server.rejections.values())  # recorded in the round records
    logged = [r for r in caplog.records if r.levelno == logging.WARNING
              and ("rejected" in r.getMessage() or "dropped" in r.getMessage())]
    assert len(logged) == sum(expected.values())  # one warning per refused input


async def test_the_server_refuses_replayed_messages_and_outsiders() -> None:
    """Replays (same message id, this round or the last) and non-participants are refused."""
    from foedus.transport.local import LocalTransport

    job = "baseline"
    server = ServerPod(job_id=job, initial_params=INITIAL, aggregator=FedAvg(), rounds=2,
                       expected_clients=3, min_clients=1, round_timeout=0.5,
                       participants=["client-000", "client-001"])
    transport = LocalTransport()
    t = topics(job)
    replays: list[bytes] = []

    async def actor() -> None:
        async for payload in models:
            model = decode(payload)
            if model.kind is Kind.CONTROL:
                return
            mine = encode(_update(job, model.round, "client-000", 1.0))
            out = [mine, mine, *replays, encode(_update(job, model.round, "mallory", 7.0))]
            replays[:] = [mine]
            for p in out:
                await transport.publish(t.updates, p)

    models = await transport.subscribe(t.model)  # before round 1 is broadcast
    task = asyncio.create_task(actor())
    async with Runtime(server_graph(server, transport)) as runtime:
        await asyncio.wait_for(runtime.wait(), 30)
    await task
    assert server.rejections == Counter({"replayed": 3, "unknown_sender": 2})
    assert [r.accepted for r in server.history] == [1, 1]
    np.testing.assert_allclose(server.params["w"], 1.0)  # mallory's 7.0 never counted
