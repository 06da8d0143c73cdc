"""Secure aggregation as pods: whole rounds over the in-process transport, with dropouts."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter
from foedus.privacy.dp import CentralDPStage, ClipStage, LocalDPStage
from foedus.privacy.secagg_pods import SecAggClientPod, SecureSumSettings
from foedus.roles.client import ClientPod
from foedus.roles.secure_server import SecureServerPod
from foedus.roles.server import ServerPod
from foedus.topology.centralized import run_centralized
from foedus.topology.secure_sum import run_secure_aggregation_job
from foedus.transport.local import LocalTransport
from tests.topology.helpers import digits

SHAPES = {"w": (3, 4), "b": (4,)}


class FixedUpdate(ModelAdapter):
    """A 'model' whose training returns a known vector per client and round: lets a test
    compute the exact sum of the survivors' updates."""

    name: ClassVar[str] = "fixed-update"

    def __init__(self, seed: int, examples: int) -> None:
        self.seed, self.examples, self.round = seed, examples, 0
        self.params: dict[str, np.ndarray] = {k: np.zeros(s) for k, s in SHAPES.items()}

    def expected(self, rnd: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, rnd])
        return {k: rng.normal(size=s) for k, s in SHAPES.items()}

    def get_params(self) -> Params:
        return dict(self.params)

    def set_params(self, params: Params) -> None:
        self.round += 1

    def begin_round(self, seed: int) -> None:
        pass

    def fit(self, data: Dataset, epochs: int = 1) -> dict[str, float]:
        self.params = self.expected(self.round)
        return {}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        return {}


class DropsAfterSharingKeys(SecAggClientPod):
    """A client that vanishes after sharing its keys: it never sends its masked input."""

    async def on_shares(self, msg: Message) -> None:
        self.dropped_in_round = msg.round


def tiny_dataset(n: int) -> Dataset:
    return Dataset(np.zeros((n, 1)), np.zeros(n))


def server(participants: list[str], rounds: int, *, timeout: float = 30.0,
           initial: Params | None = None, **options: Any) -> SecureServerPod:
    return SecureServerPod(
        job_id="secagg-test", initial_params=initial or {k: np.zeros(s) for k, s in SHAPES.items()},
        aggregator=FedAvg(), rounds=rounds, expected_clients=len(participants),
        participants=participants, round_timeout=timeout, **options,
    )


async def test_ten_clients_with_three_dropping_after_sharing_keys_give_the_survivors_mean(
) -> None:
    ids = [f"client-{i:03d}" for i in range(10)]
    settings = SecureSumSettings(max_dropouts=3, step_timeout=1.0)
    transport = LocalTransport()
    models = {c: FixedUpdate(i, examples=10 + 5 * i) for i, c in enumerate(ids)}
    dropping = set(ids[2:5])
    clients: list[Any] = []
    for c in ids:
        pod = ClientPod(client_id=c, model=models[c], data=tiny_dataset(models[c].examples))
        secagg = (DropsAfterSharingKeys if c in dropping else SecAggClientPod)(
            client_id=c, participants=ids, settings=settings)
        clients.append((pod, transport, secagg))
    srv = server(ids, rounds=2, min_clients=7)
    history = await run_secure_aggregation_job(srv, transport, clients, settings)

    assert [(r.accepted, r.status) for r in history] == [(7, "ok"), (7, "ok")]
    assert all(sorted(r.failed_clients) == sorted(dropping) for r in history)
    survivors = [c for c in ids if c not in dropping]
    weights = {c: models[c].examples for c in survivors}
    expected = {k: sum(weights[c] * models[c].expected(2)[k] for c in survivors)
                / sum(weights.values()) for k in SHAPES}
    for k in SHAPES:  # the global model after round 2 is the survivors' weighted mean
        np.testing.assert_allclose(srv.params[k], expected[k], atol=1e-4)


async def test_more_dropouts_than_tolerated_keep_the_global_model_and_reveal_no_update(
) -> None:
    ids = [f"client-{i:03d}" for i in range(5)]
    settings = SecureSumSettings(max_dropouts=1, step_timeout=0.5)
    transport = LocalTransport()
    clients: list[Any] = []
    for i, c in enumerate(ids):
        pod = ClientPod(client_id=c, model=FixedUpdate(i, 10), data=tiny_dataset(10))
        secagg = (DropsAfterSharingKeys if i < 2 else SecAggClientPod)(
            client_id=c, participants=ids, settings=settings)
        clients.append((pod, transport, secagg))
    srv = server(ids, rounds=1, min_clients=3)
    history = await run_secure_aggregation_job(srv, transport, clients, settings)
    assert (history[0].accepted, history[0].status) == (0, "no_quorum")
    for k in SHAPES:
        assert not srv.params[k].any()  # still the initial zeros: nothing leaked into it


async def test_a_client_whose_update_exceeds_the_value_range_drops_out_without_sending_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = [f"client-{i:03d}" for i in range(4)]
    settings = SecureSumSettings(max_dropouts=1, value_range=1e-9, step_timeout=0.5)
    transport = LocalTransport()
    sent: list[Message] = []
    secagg = SecAggClientPod(client_id=ids[0], participants=ids, settings=settings)

    async def capture(wire: str, msg: Message) -> None:
        sent.append(msg)

    secagg.send = capture  # type: ignore[method-assign]
    update = Message.create(Kind.UPDATE, job_id="j", round=1, sender=ids[0],
                            params={"w": np.ones(3)}, num_examples=5)
    with caplog.at_level(logging.ERROR, logger="foedus"):
        await secagg.on_in(update)
    assert [m.kind for m in sent] == [Kind.ERROR]
    assert "value_range" in (sent[0].error or "")
    assert not sent[0].params
    # said at the level a failed client is (the CLI shows ERROR): a job whose every client
    # exceeded value_range ended no_quorum with no visible reason
    assert [r.getMessage()[:51] for r in caplog.records if r.levelno == logging.ERROR] == [
        "client client-000: not taking part in round 1's sec"]
    del transport


async def test_secure_aggregation_job_refuses_stages_with_a_server_half_or_bad_order() -> None:
    ids = ["a", "b", "c"]
    settings = SecureSumSettings(max_dropouts=1)
    with pytest.raises(ConfigError, match="server half"):  # central noise needs each update
        await run_secure_aggregation_job(
            server(ids, 1), LocalTransport(), [], settings,
            client_stages=[CentralDPStage(clients_per_round=3, noise_multiplier=1.0)])
    with pytest.raises(ConfigError, match="clips after"):
        await run_secure_aggregation_job(
            server(ids, 1), LocalTransport(), [], settings,
            client_stages=[LocalDPStage(clip_norm=1.0, noise_multiplier=0.5), ClipStage(1.0)])


@pytest.mark.integration
async def test_a_secure_aggregation_run_on_digits_matches_plain_fedavg_and_learns() -> None:
    data = digits(10)
    ids = [f"client-{i:03d}" for i in range(10)]

    def clients(transport: LocalTransport) -> list[tuple[ClientPod, LocalTransport]]:
        return [(ClientPod(client_id=c, model=data.model(), data=data.shares[i], seed=i),
                 transport) for i, c in enumerate(ids)]

    secure = LocalTransport()
    srv = server(ids, rounds=5, initial=data.model().get_params(),
                 evaluate=lambda p: {"accuracy": data.accuracy(p)})
    history = await run_secure_aggregation_job(srv, secure, clients(secure),
                                               SecureSumSettings(max_dropouts=3))
    plain = LocalTransport()
    reference = ServerPod(job_id="plain", initial_params=data.model().get_params(),
                          aggregator=FedAvg(), rounds=5, expected_clients=10, participants=ids,
                          evaluate=lambda p: {"accuracy": data.accuracy(p)})
    await run_centralized(reference, plain, [(c, t, []) for c, t in clients(plain)])

    assert [r.accepted for r in history] == [10] * 5
    # fixed-point rounding (2^-20) is amplified by later training, so models drift apart a
    # little; accuracy does not (documented in docs/privacy.md: 0.93 both, seed 0)
    secure_accuracy = history[-1].metrics["accuracy"]
    assert abs(secure_accuracy - reference.history[-1].metrics["accuracy"]) < 0.03
    assert secure_accuracy > 0.8  # chance is 0.1


@pytest.mark.integration
async def test_ten_clients_three_dropping_over_kafka_give_the_survivors_mean(tansu: Any) -> None:
    from foedus.transport.kafka import KafkaTransport

    ids = [f"client-{i:03d}" for i in range(10)]
    settings = SecureSumSettings(max_dropouts=3, step_timeout=5.0)
    server_transport = KafkaTransport(tansu.bootstrap)
    client_transport = KafkaTransport(tansu.bootstrap)
    models = {c: FixedUpdate(i, examples=10 + 5 * i) for i, c in enumerate(ids)}
    dropping = {ids[0], ids[5], ids[9]}
    clients: list[Any] = []
    for c in ids:
        pod = ClientPod(client_id=c, model=models[c], data=tiny_dataset(models[c].examples))
        secagg = (DropsAfterSharingKeys if c in dropping else SecAggClientPod)(
            client_id=c, participants=ids, settings=settings)
        clients.append((pod, client_transport, secagg))
    srv = server(ids, rounds=1, min_clients=7, timeout=60.0)
    try:
        history = await run_secure_aggregation_job(srv, server_transport, clients, settings)
    finally:
        await client_transport.close()
        await server_transport.close()
    assert [(r.accepted, r.status) for r in history] == [(7, "ok")]
    survivors = [c for c in ids if c not in dropping]
    total = sum(models[c].examples for c in survivors)
    for k in SHAPES:
        expected = sum(models[c].examples * models[c].expected(1)[k] for c in survivors) / total
        np.testing.assert_allclose(srv.params[k], expected, atol=1e-4)
