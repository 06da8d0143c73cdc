"""Hostile peers in hierarchical, swarm and asynchronous jobs over a real Mosquitto broker.

In each test the job's actors run in this process over one MQTT connection, and an attacker
on its own connection writes to the job's topics what a stranger on the broker (or a rogue
participant without an enforced identity) can: undecodable bytes, a non-participant's message,
NaN values, and the forgeries that fit the topology: a parent's model and ``stop`` for an edge,
an aggregate from a peer that is not the round's leader for a swarm, a flood of updates under
one participant's name for a FedBuff server. Each must be refused and counted under its
reason, and the job must finish with a sound model.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.core.errors import CodecError
from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.core.runtime import run_graphs
from foedus.data.datasets import Dataset
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.async_server import BUFFER_SHARE, AsyncServerPod
from foedus.roles.client import ClientPod
from foedus.roles.peer import NOT_LEADER, PeerPod
from foedus.roles.server import ServerPod
from foedus.topology.asynchronous import run_asynchronous
from foedus.topology.centralized import topics
from foedus.topology.hierarchical import EdgeNode, build_hierarchy, edge_topics
from foedus.topology.swarm import run_swarm, swarm_topic
from foedus.transport.mqtt import MqttTransport
from tests.privacy.test_secagg_pods import SHAPES, FixedUpdate, tiny_dataset
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs
from tests.waiting import until

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name
pytestmark = pytest.mark.integration


class SlowUpdate(FixedUpdate):
    """A known update per round that takes a moment to train, so an attack lands mid-job."""

    def fit(self, data: Dataset, epochs: int = 1) -> dict[str, float]:
        time.sleep(0.15)
        return super().fit(data, epochs)


class GatedUpdate(FixedUpdate):
    """A known update per round whose last round waits for ``gate`` (set by the test once its
    attack was seen), so the job cannot end before the attack lands, however slow the machine."""

    def __init__(self, seed: int, examples: int, gate: threading.Event, last: int) -> None:
        super().__init__(seed, examples)
        self.gate, self.last = gate, last

    def fit(self, data: Dataset, epochs: int = 1) -> dict[str, float]:
        if self.round >= self.last:
            self.gate.wait(60)  # bounded: a missed attack fails the test's assertions instead
        return super().fit(data, epochs)


def zeros() -> Params:
    return {k: np.zeros(s) for k, s in SHAPES.items()}


def filled(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value) for k, s in SHAPES.items()}


def connect(broker: Mosquitto) -> MqttTransport:
    return MqttTransport("127.0.0.1", broker.plain_port)


def forged(kind: Kind, job: str, rnd: int, sender: str, params: Params | None = None,
           **meta: object) -> bytes:
    return encode(Message.create(kind, job_id=job, round=rnd, sender=sender, params=params,
                                 num_examples=10, meta=meta))


async def send(attacker: MqttTransport, topic: str, payload: bytes) -> None:
    """Publish as the attacker, with the message's sender as the record key where there is one
    (a stranger can set the key as freely as the sender field itself)."""
    try:
        sender: str | None = decode(payload).sender
    except CodecError:
        sender = None
    await attacker.publish(topic, payload, key=sender)


async def test_an_edge_refuses_forged_parents_and_junk_children_and_the_tree_finishes(
    mosquitto: Mosquitto,
) -> None:
    job = f"tree-{uuid.uuid4().hex[:6]}"
    children = ("client-000", "client-001")
    server = ServerPod(job_id=job, initial_params=zeros(), aggregator=FedAvg(), rounds=3,
                       expected_clients=1, participants=["north"], round_timeout=10.0)
    attacked = threading.Event()
    clients = {c: ClientPod(client_id=c, model=GatedUpdate(i, 10, attacked, last=3),
                            data=tiny_dataset(10))
               for i, c in enumerate(children)}
    honest, attacker = connect(mosquitto), connect(mosquitto)
    tree = build_hierarchy(server, [EdgeNode("north", children)], clients, honest)
    edge = tree.edges["north"]

    async def attack() -> None:
        await until(lambda: len(edge.history) >= 1, "the edge's first round")
        own, parent = edge_topics(job, "north"), topics(job)
        await send(attacker, own.updates, b"\x00 not a foedus message")
        await send(attacker, own.updates, forged(Kind.UPDATE, job, 2, "mallory", zeros()))
        await send(attacker, parent.model, forged(Kind.MODEL, job, 9, "mallory", zeros()))
        await send(attacker, parent.model, forged(Kind.MODEL, job, 9, "server",
                                                    filled(np.nan)))
        await send(attacker, parent.model, forged(Kind.CONTROL, job, 9, "server",
                                                    action="stop", run="bogus"))
        try:  # the last round trains once the edge has seen the whole attack
            await until(lambda: edge.refused.total() >= 3 and edge.rejections.total() >= 1,
                        "the edge to refuse the attack", timeout=60)
        finally:
            attacked.set()

    try:
        await asyncio.gather(attack(),
                             run_graphs(tree.server_runtime, *tree.runtimes.values()))
    finally:
        await attacker.close()
        await honest.close()
    assert [r.status for r in server.history] == ["ok"] * 3
    assert edge.refused == {"wrong_sender": 1, "not_finite": 1, "other_run": 1}
    # mallory's update: unknown_sender, or stale_round when it lands between two edge rounds
    assert edge.rejections.total() == 1
    assert set(edge.rejections) <= {"unknown_sender", "stale_round"}
    expected = {k: np.mean([m.expected(3)[k] for m in (c.model for c in clients.values())],  # type: ignore[attr-defined]
                           axis=0) for k in SHAPES}
    for k in SHAPES:  # the last round is the two children's mean, nothing forged in it
        np.testing.assert_allclose(server.params[k], expected[k], atol=1e-9)


async def test_swarm_peers_adopt_only_the_elected_leaders_aggregate(
    mosquitto: Mosquitto,
) -> None:
    job = f"swarm-{uuid.uuid4().hex[:6]}"
    ids = ["p0", "p1", "p2"]  # round r's leader is ids[r % 3]: p0 leads only round 3
    peers = [PeerPod(job_id=job, peer_id=p, model=SlowUpdate(i, 10), data=tiny_dataset(10),
                     rounds=4, expected_peers=3, round_timeout=5.0, mode="leader", peers=ids)
             for i, p in enumerate(ids)]
    honest, attacker = connect(mosquitto), connect(mosquitto)

    async def attack() -> None:
        await until(lambda: all(len(p._last_seen) == 2 for p in peers), "the peers to meet")
        topic = swarm_topic(job)
        await send(attacker, topic, b"junk")
        await send(attacker, topic, forged(Kind.MODEL, job, 1, "mallory", zeros()))
        await send(attacker, topic, forged(Kind.MODEL, job, 2, "p0", filled(np.inf),
                                             aggregate=True))
        await send(attacker, topic, forged(Kind.MODEL, job, 4, "p0", filled(1000.0),
                                             aggregate=True))  # p0's name: it leads round 3

    try:
        _, histories = await asyncio.gather(attack(), run_swarm(peers, honest, timeout=60))
    finally:
        await attacker.close()
        await honest.close()
    assert all(len(h) == 4 for h in histories.values())
    refused = Counter[str]()
    for p in peers:
        refused.update(p.rejections)
    # p0 never reads its own name back; p1 and p2 refuse what reaches them
    assert refused["unknown_sender"] == 3 and refused["not_finite"] == 2
    assert refused[NOT_LEADER] == 1  # round 4's at p2 (p1, the leader, adopts nothing)
    for k in SHAPES:  # consensus on the leader's aggregate, nothing of the forged 1000s
        assert all(np.allclose(p.params[k], peers[0].params[k]) for p in peers)
        assert np.abs(peers[0].params[k]).max() < 100


async def test_a_fedbuff_server_bounds_one_senders_share_of_each_buffer(
    mosquitto: Mosquitto,
) -> None:
    job = f"fedbuff-{uuid.uuid4().hex[:6]}"
    ids = ["client-000", "client-001"]
    server = AsyncServerPod(job_id=job, initial_params=zeros(), versions=4, buffer_size=2,
                            participants=ids, timeout=30.0)
    clients = [AsyncClientPod(client_id=c, model=SlowUpdate(i, 10), data=tiny_dataset(10))
               for i, c in enumerate(ids)]
    honest, attacker = connect(mosquitto), connect(mosquitto)

    async def attack() -> None:
        await until(lambda: len(server.history) >= 1, "the first version")
        updates = topics(job).updates
        await send(attacker, updates, b"junk")
        await send(attacker, updates, forged(Kind.UPDATE, job, 1, "mallory", zeros()))
        await send(attacker, updates, forged(Kind.UPDATE, job, 1, ids[1], filled(np.nan)))
        for _ in range(20):  # one participant's name, back to back
            await send(attacker, updates, forged(Kind.UPDATE, job, 1, ids[0], filled(5.0)))

    try:
        _, history = await asyncio.gather(
            attack(), run_asynchronous(server, honest, [(c, honest, ()) for c in clients]))
    finally:
        await attacker.close()
        await honest.close()
    assert len(history) == 4
    assert all(Counter(r.senders)[c] <= 1 for r in history for c in ids)  # half of 2 places
    assert server.rejections[BUFFER_SHARE] >= 1
    assert server.rejections["not_finite"] == 1  # mallory's: dropped by the MQTT reader, which
    # knows the participants (the server's subscription), before decoding
    for k in SHAPES:
        assert np.isfinite(server.params[k]).all()
