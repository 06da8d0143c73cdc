"""Swarm FL: peers without a server reach a consensus model, survive a dead peer, let a new peer
catch up, and refuse bad models."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from foedus.codec import encode
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.peer import PeerPod, PeerRecord
from foedus.runner import run_job
from foedus.topology.swarm import run_swarm, swarm_graph, swarm_topic
from foedus.transport.local import LocalTransport
from tests.topology.helpers import Digits, digits, distance
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name

JOB = "swarm"


class SlowPeer(PeerPod):
    """A peer whose local training takes ``delay`` seconds more (a slower machine)."""

    delay = 0.0

    def _train(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        time.sleep(self.delay)
        return super()._train()


def make_peers(data: Digits, rounds: int, **kw: object) -> list[PeerPod]:
    options: dict = {"round_timeout": 5.0, "expected_peers": len(data.shares)} | kw
    return [
        SlowPeer(job_id=JOB, peer_id=f"peer-{i}", model=data.model(), data=share,
                 rounds=rounds, name="peer", seed=7, **options)
        for i, share in enumerate(data.shares)
    ]


def spread(params: list[dict[str, np.ndarray]]) -> float:
    """The largest distance between any two peers' models."""
    return max(distance(a, b) for a, b in itertools.combinations(params, 2))


def watch(peers: list[PeerPod]) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    """Record every peer's model after every round: round -> peer -> params."""
    seen: dict[int, dict[str, dict[str, np.ndarray]]] = {}

    def listener(peer: PeerPod, record: PeerRecord) -> None:
        seen.setdefault(record.round, {})[peer.peer_id] = {
            k: v.copy() for k, v in peer.params.items()
        }

    for p in peers:
        p.round_listeners.append(listener)
    return seen


async def test_gossip_with_two_neighbours_converges_to_a_consensus_model() -> None:
    # scikit-learn's decaying "optimal" step: local training re-injects less and less spread
    data = digits(6, scheme="dirichlet", learning_rate="optimal")
    # ten rounds of training, then four of averaging only: local training re-injects
    # differences each round, the mixing rounds then shrink the spread geometrically
    peers = make_peers(data, rounds=14, neighbors=2, mixing_rounds=4)
    seen = watch(peers)
    transport = LocalTransport()
    histories = await run_swarm(peers, transport, timeout=60)
    await transport.close()
    assert all(len(h) == 14 for h in histories.values())
    assert all(r.combined == 3 for h in histories.values() for r in h)  # itself + 2 neighbours
    first = spread(list(seen[1].values()))
    last = spread([p.params for p in peers])
    norm = np.mean([distance(p.params, {k: 0 * v for k, v in p.params.items()}) for p in peers])
    assert spread(list(seen[10].values())) < 0.5 * first  # gossip pulls peers together
    assert last < 0.05 * first
    assert last < 0.02 * norm
    accuracies = [data.accuracy(p.params) for p in peers]
    assert min(accuracies) > 0.8  # ten classes: chance is 0.1


async def test_full_gossip_gives_every_peer_the_same_model_each_round() -> None:
    data = digits(4)
    peers = make_peers(data, rounds=3)
    transport = LocalTransport()
    await run_swarm(peers, transport, timeout=60)
    await transport.close()
    assert spread([p.params for p in peers]) < 1e-9
    assert data.accuracy(peers[0].params) > 0.8


async def test_a_peer_killed_mid_run_does_not_stop_the_swarm() -> None:
    data = digits(4)
    peers = make_peers(data, rounds=6, round_timeout=1.0)
    victim = peers[3]
    transport = LocalTransport()
    runtimes = [Runtime(swarm_graph(p, transport)) for p in peers]
    for rt in runtimes:
        await rt.start()
    while len(victim.history) < 2:
        await asyncio.sleep(0.005)
    await runtimes[3].stop()  # killed: no leave notice, it just goes silent
    await asyncio.wait_for(asyncio.gather(*(rt.wait() for rt in runtimes[:3])), 30)
    for rt in runtimes[:3]:
        await rt.stop()
    await transport.close()
    survivors = peers[:3]
    assert all(len(p.history) == 6 for p in survivors)
    assert all(victim.peer_id not in p.history[-1].alive for p in survivors)
    assert all(p.history[-1].received == 2 for p in survivors)
    assert spread([p.params for p in survivors]) < 1e-9
    assert data.accuracy(survivors[0].params) > 0.8


async def test_a_new_peer_catches_up_from_the_retained_model() -> None:
    data = digits(4)
    # a long deadline: on a loaded machine a slow round must not drop the newcomer from the view
    # (the rounds end as soon as every model is in, so it costs nothing when all goes well)
    peers = make_peers(data, rounds=12, expected_peers=3, round_timeout=30.0)
    for p in peers:
        p.delay = 0.03
    founders, newcomer = peers[:3], peers[3]
    newcomer.join = True
    transport = LocalTransport()
    runtimes = [Runtime(swarm_graph(p, transport)) for p in founders]
    for rt in runtimes:
        await rt.start()
    while len(founders[0].history) < 4:
        await asyncio.sleep(0.005)
    late = Runtime(swarm_graph(newcomer, transport))
    await late.start()
    await asyncio.wait_for(asyncio.gather(*(rt.wait() for rt in [*runtimes, late])), 30)
    for rt in [*runtimes, late]:
        await rt.stop()
    await transport.close()
    assert newcomer.joined_from is not None and newcomer.joined_from.round >= 4
    assert data.accuracy(newcomer.joined_from.params) > 0.7  # it started from a trained model
    assert newcomer.history[0].round > 4 and newcomer.history[-1].round == 12
    # the swarm now waits for it: in the founders' view it is alive in the rounds after it
    # joined (in the very last round, its leave notice may already have arrived)
    after = [r for r in founders[0].history if r.round > newcomer.joined_from.round + 1]
    assert any(newcomer.peer_id in r.alive for r in after), [r.alive for r in after]
    assert data.accuracy(newcomer.params) > 0.8
    assert spread([p.params for p in peers]) < 1e-9


async def test_rotating_leader_is_elected_without_messages_and_adopted_by_all() -> None:
    data = digits(4)
    peers = make_peers(data, rounds=4, mode="leader")
    transport = LocalTransport()
    histories = await run_swarm(peers, transport, timeout=60)
    await transport.close()
    leaders = [histories["peer-0"][r].leader for r in range(4)]
    assert len(set(leaders)) == 4  # every peer leads once in four rounds
    for peer_id, h in histories.items():
        assert [r.leader for r in h] == leaders  # every peer elected the same leaders
        assert [r.adopted_leader for r in h] == [r.leader != peer_id for r in h]
    assert spread([p.params for p in peers]) < 1e-9
    assert data.accuracy(peers[0].params) > 0.8


async def test_a_model_that_does_not_fit_is_refused_and_counted() -> None:
    data = digits(2)
    peers = make_peers(data, rounds=2, expected_peers=2)
    transport = LocalTransport()
    bad = Message.create(Kind.MODEL, job_id=JOB, round=1, sender="mallory",
                         params={"coef": np.ones(3)}, num_examples=5)
    nan = Message.create(Kind.MODEL, job_id=JOB, round=1, sender="eve",
                         params={k: np.full_like(v, np.nan) for k, v in peers[0].params.items()},
                         num_examples=5)

    async def attack() -> None:
        await asyncio.sleep(0.01)
        for msg in (bad, nan):
            await transport.publish(swarm_topic(JOB), encode(msg))

    await asyncio.gather(attack(), run_swarm(peers, transport, timeout=30))
    await transport.close()
    for p in peers:
        assert p.rejected == {"wrong_names": 1, "not_finite": 1}
        assert all("mallory" not in r.alive for r in p.history)
    assert data.accuracy(peers[0].params) > 0.7


def swarm_job(count: int, **params: object) -> JobSpec:
    """A swarm job of ``count`` peers, loaded as a job file is."""
    return JobSpec.from_dict({"job_id": JOB, "rounds": 2, "clients": {"count": count},
                              "data": {"dataset": "digits", "partition": "iid"},
                              "topology": {"type": "swarm", "params": params}})


async def test_a_job_round_counts_the_models_its_peers_averaged_not_those_they_received(
) -> None:
    # each of 4 peers receives the 3 others' models but averages 1 (neighbors: 1): the job's
    # round said 12 updates accepted, 3 per peer, four times what went into any model
    result = await run_job(swarm_job(4, neighbors=1))
    assert [r.accepted for r in result.history] == [4, 4]
    assert all(r["received"] == 3 and r["accepted"] == 1
               for records in result.records.values() for r in records)
    assert result.summary()["updates_accepted"] == 8 and result.failure is None


async def test_in_leader_mode_the_leader_counts_what_it_averaged_its_followers_the_aggregate(
) -> None:
    result = await run_job(swarm_job(3, mode="leader", neighbors=1))
    for rnd in range(2):
        mine = {peer: records[rnd] for peer, records in result.records.items()}
        leader = mine["client-000"]["leader"]
        assert mine[leader]["accepted"] == 2  # it averages every model, whatever neighbors
        assert all(r["accepted"] == 1 and r["adopted_leader"]
                   for peer, r in mine.items() if peer != leader)
    assert [r.accepted for r in result.history] == [4, 4]


@pytest.mark.integration
def test_a_peer_that_never_hears_another_peer_fails_its_process_with_one_line(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    # the other peers never start: it trained alone and exited 0 with "updates accepted 0"
    job = tmp_path / "swarm.yaml"
    job.write_text(yaml.safe_dump({
        "job_id": f"alone-{uuid.uuid4().hex[:6]}", "rounds": 2, "round_timeout": 1,
        "clients": {"count": 3}, "data": {"dataset": "digits", "partition": "iid"},
        "transport": {"type": "mqtt", "params": {"host": "127.0.0.1",
                                                 "port": mosquitto.plain_port}},
        "topology": {"type": "swarm", "params": {"join_timeout": 1}}}))
    run = subprocess.run([sys.executable, "-m", "foedus.cli", "actor", str(job), "client-000"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    failed = [line for line in run.stderr.splitlines() if "failed" in line]
    assert len(failed) == 1, run.stderr
    assert "client-000 heard from no other peer in 2 rounds" in failed[0]


def test_join_timeout_must_be_a_positive_number_of_seconds() -> None:
    with pytest.raises(ConfigError, match=r"params.join_timeout: expected a number of seconds "
                                          r"> 0, got 0"):
        swarm_job(3, join_timeout=0)


def test_more_neighbours_than_other_peers_is_refused_when_the_job_is_loaded() -> None:
    # 4 peers have 3 others: neighbors 7 used to mean "all of them" without a word
    with pytest.raises(ConfigError) as caught:
        swarm_job(4, neighbors=7)
    message = str(caught.value)
    assert "neighbors" in message and "7" in message and "3 other peers" in message
    assert "\n" not in message
    assert swarm_job(4, neighbors=3).topology.params == {"neighbors": 3}  # all others: fine
    with pytest.raises(ConfigError, match="neighbors 4 is more than the 3 other peers"):
        make_peers(digits(4), rounds=2, neighbors=4)  # the same rule for peers built by hand


def test_a_swarm_of_one_peer_is_refused_when_the_job_is_loaded() -> None:
    # it trained alone, averaged nothing and reported 0 updates as a swarm job that succeeded
    with pytest.raises(ConfigError, match=r"clients.count: a swarm needs 2 peers or more, got 1"):
        swarm_job(1)
