"""A malicious participant inside a secure-sum *job*: the liar is named in the round's summary
and log, counted in the round record, and the global model is the honest mean or unchanged.

The participants here are real :class:`SecAggClientPod` subclasses that lie at one step, in a
whole job of 4 clients (threshold 3) over the in-process transport, and once over Mosquitto.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from foedus.core.message import Kind, Message
from foedus.core.params import Params
from foedus.privacy import shamir
from foedus.privacy.secagg_pods import (
    EQUIVOCATION,
    EXCLUDED,
    MASKED,
    MISBEHAVED,
    SUMMARY,
    SecAggClientPod,
    SecureSumSettings,
)
from foedus.roles.client import ClientPod
from foedus.roles.secure_server import SecureServerPod
from foedus.topology.secure_sum import run_secure_aggregation_job
from foedus.transport.base import Transport
from foedus.transport.local import LocalTransport
from tests.privacy.test_secagg_pods import SHAPES, FixedUpdate, server, tiny_dataset
from tests.transport.mqtt_fixtures import Mosquitto, mosquitto, mqtt_certs

__all__ = ["mosquitto", "mqtt_certs"]  # fixtures used by name

IDS = [f"client-{i:03d}" for i in range(4)]


class Equivocator(SecAggClientPod):
    """Sends its masked vector, then a different one for the same step."""

    async def send(self, wire: str, msg: Message) -> None:
        await super().send(wire, msg)
        if msg.meta.get("secagg") == "masked":
            other = np.asarray(msg.params[MASKED]) + np.uint64(1)
            await super().send(wire, Message.create(
                Kind.CONTROL, job_id=msg.header.job_id, round=msg.round, sender=msg.sender,
                meta=dict(msg.meta), params={MASKED: other}))


class CorruptShare(SecAggClientPod):
    """Returns a wrong share of the first survivor's self-mask seed at unmasking."""

    async def send(self, wire: str, msg: Message) -> None:
        if msg.meta.get("secagg") == "unmask":
            shares = dict(msg.meta["b"])
            first = min(shares, key=int)
            shares[first] = shamir.share_to_bytes(
                (shamir.share_from_bytes(shares[first]) + 12345) % shamir.PRIME)
            msg = Message.create(Kind.CONTROL, job_id=msg.header.job_id, round=msg.round,
                                 sender=msg.sender, meta={**msg.meta, "b": shares})
        await super().send(wire, msg)


class JunkMasked(SecAggClientPod):
    """Sends random ring elements instead of its input plus its masks."""

    async def send(self, wire: str, msg: Message) -> None:
        if msg.meta.get("secagg") == "masked":
            junk = np.random.default_rng(0).integers(0, 2**63, msg.params[MASKED].shape,
                                                     dtype=np.uint64)
            msg = Message.create(Kind.CONTROL, job_id=msg.header.job_id, round=msg.round,
                                 sender=msg.sender, meta=dict(msg.meta), params={MASKED: junk})
        await super().send(wire, msg)


def job(liars: dict[str, type[SecAggClientPod]], transport: Transport,
        client_transport: Transport | None = None, ids: list[str] = IDS, max_dropouts: int = 1,
        ) -> tuple[SecureServerPod, dict[str, FixedUpdate], list[Any], SecureSumSettings]:
    settings = SecureSumSettings(max_dropouts=max_dropouts, step_timeout=5.0)
    models = {c: FixedUpdate(i, examples=10 + i) for i, c in enumerate(ids)}
    clients: list[Any] = []
    for c in ids:
        pod = ClientPod(client_id=c, model=models[c], data=tiny_dataset(models[c].examples))
        secagg = liars.get(c, SecAggClientPod)(client_id=c, participants=ids, settings=settings)
        clients.append((pod, client_transport or transport, secagg))
    return server(ids, rounds=1, min_clients=3, timeout=30.0), models, clients, settings


def mean_of(models: dict[str, FixedUpdate], who: list[str]) -> Params:
    total = sum(models[c].examples for c in who)
    return {k: np.asarray(sum(models[c].examples * models[c].expected(1)[k] for c in who))
            / total for k in SHAPES}


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "misbehaved" in r.getMessage()]


async def test_an_equivocating_participant_is_excluded_named_and_the_others_summed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = LocalTransport()
    srv, models, clients, settings = job({IDS[1]: Equivocator}, transport)
    with caplog.at_level(logging.WARNING):
        history = await run_secure_aggregation_job(srv, transport, clients, settings)
    record = history[0]
    # excluded (a dropout) when its second answer came while the step was open; when it came
    # after the step closed, its first answer is in the sum and it is only named
    assert record.status == "ok" and record.failed_clients in ([IDS[1]], [])
    assert record.accepted == 4 - len(record.failed_clients)
    assert record.rejected[EQUIVOCATION] == 1 and record.rejected[MISBEHAVED] == 1
    assert set(record.rejected) <= {EQUIVOCATION, MISBEHAVED, EXCLUDED}  # its later messages
    in_sum = [c for c in IDS if c not in record.failed_clients]
    for k, v in mean_of(models, in_sum).items():  # exactly the mean of those in the sum
        np.testing.assert_allclose(srv.params[k], v, atol=1e-4)
    assert summaries(caplog) == [f"secure sum round 1: participant {IDS[1]!r} misbehaved: "
                                 "equivocated: sent two different 'masked' answers"]
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_corrupt_share_at_unmasking_is_named_and_the_sum_stays_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = LocalTransport()
    srv, models, clients, settings = job({IDS[0]: CorruptShare}, transport)
    with caplog.at_level(logging.WARNING):
        history = await run_secure_aggregation_job(srv, transport, clients, settings)
    assert (history[0].status, history[0].accepted) == ("ok", 4)
    assert history[0].rejected == {MISBEHAVED: 1}
    for k, v in mean_of(models, IDS).items():
        np.testing.assert_allclose(srv.params[k], v, atol=1e-4)
    [named] = summaries(caplog)
    assert f"participant {IDS[0]!r} misbehaved: returned a share of client 1's self-mask" \
        in named


async def test_a_junk_masked_vector_aborts_the_sum_and_keeps_the_model() -> None:
    transport = LocalTransport()
    srv, _, clients, settings = job({IDS[2]: JunkMasked}, transport)
    history = await run_secure_aggregation_job(srv, transport, clients, settings)
    assert (history[0].status, history[0].accepted) == ("no_quorum", 0)
    for k in SHAPES:
        assert not srv.params[k].any()  # the initial zeros: no wrong sum got in


@pytest.mark.integration
async def test_over_mosquitto_an_equivocator_and_a_share_corrupter_cannot_spoil_the_sum(
    mosquitto: Mosquitto,
) -> None:
    from foedus.transport.mqtt import MqttTransport

    server_side = MqttTransport("127.0.0.1", mosquitto.plain_port, topic_prefix="secagg-mal")
    client_side = MqttTransport("127.0.0.1", mosquitto.plain_port, topic_prefix="secagg-mal")
    ids = [*IDS, "client-004"]  # threshold 3 of 5: one excluded, one share too many to spare
    srv, models, clients, settings = job({ids[1]: Equivocator, ids[3]: CorruptShare},
                                         server_side, client_side, ids, max_dropouts=2)
    sums: list[Message] = []
    original = srv.on_update

    async def keep(msg: Message) -> None:
        sums.append(msg)
        await original(msg)

    srv.on_update = keep  # type: ignore[method-assign]
    try:
        history = await run_secure_aggregation_job(srv, server_side, clients, settings)
    finally:
        await client_side.close()
        await server_side.close()
    record = history[0]  # the equivocator is in the sum or not, by timing (see above)
    assert record.status == "ok" and record.failed_clients in ([ids[1]], [])
    assert record.rejected[EQUIVOCATION] == 1 and record.rejected[MISBEHAVED] == 2
    assert set(record.rejected) <= {EQUIVOCATION, MISBEHAVED, EXCLUDED}
    in_sum = [c for c in ids if c not in record.failed_clients]  # a share corrupter's own
    for k, v in mean_of(models, in_sum).items():                # input is sound
        np.testing.assert_allclose(srv.params[k], v, atol=1e-4)
    [summed] = [m for m in sums if SUMMARY in m.meta]
    assert sorted(summed.meta[SUMMARY]["misbehaved"]) == [ids[1], ids[3]]
