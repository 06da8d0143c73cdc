"""Secure-sum protocol messages that break the protocol's envelope are refused and counted.

The secure-sum server pod reads protocol messages from the job's updates topic, which anyone
on the broker may write to. Before this, it dropped an unknown sender's message with a bare log
line and no count, let a second answer to a step overwrite the first (a replay), and a message
a library choked on became a traceback. Now each is one refusal, counted under its reason in
the pod's ``rejected`` and in the round record, logged in one line, and the sum goes on.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from foedus.core.message import Kind, Message
from foedus.privacy.secagg_pods import (
    MASKED,
    STEP,
    SecAggClientPod,
    SecAggServerPod,
    SecureSumSettings,
)
from foedus.roles.client import ClientPod
from foedus.topology.secure_sum import run_secure_aggregation_job
from foedus.transport.local import LocalTransport
from tests.privacy.test_secagg_pods import SHAPES, FixedUpdate, server, tiny_dataset


class Meddler(SecAggClientPod):
    """A participant that takes part honestly, and around each round's key advertisement sends
    what a hostile party on the broker would: a message under a stranger's name, one for a
    step that is not open, a malformed advertisement (before its honest one), a replay of its
    honest advertisement, one for a round far ahead, and (from round 2) one for the round
    before."""

    async def on_in(self, msg: Message) -> None:
        rnd = msg.round

        def control(step: str, meta: dict[str, Any], *, sender: str | None = None,
                    at: int = rnd, params: dict[str, np.ndarray] | None = None) -> Message:
            return Message.create(Kind.CONTROL, job_id=msg.header.job_id, round=at,
                                  sender=sender or self.client_id, params=params,
                                  meta={STEP: step, "id": self.number, **meta})

        key = bytes(32)
        await self.send("out", control("masked", {}, params={MASKED: np.zeros(3, np.uint64)}))
        await self.send("out", control("advertise", {"c": key, "s": key}, sender="mallory"))
        await self.send("out", control("advertise", {"c": "not bytes", "s": key}))
        if rnd > 1:
            await self.send("out", control("advertise", {"c": key, "s": key}, at=rnd - 1))
        # a round far ahead: it used to replace the running sum (and stall every later one)
        await self.send("out", control("advertise", {"c": key, "s": key}, at=rnd + 10**9))
        sent: list[Message] = []
        original = self.send

        async def keep(wire: str, msg: Message) -> None:
            sent.append(msg)
            await original(wire, msg)

        self.send = keep  # type: ignore[method-assign]
        try:
            await super().on_in(msg)  # the honest advertisement
        finally:
            del self.send
        await self.send("out", sent[-1])  # ... and its replay (the same message id)


async def test_envelope_violations_are_counted_refusals_and_the_sum_stays_exact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = [f"client-{i:03d}" for i in range(4)]
    settings = SecureSumSettings(max_dropouts=1, step_timeout=5.0)
    transport = LocalTransport()
    models = {c: FixedUpdate(i, examples=10 + i) for i, c in enumerate(ids)}
    clients: list[Any] = []
    for c in ids:
        pod = ClientPod(client_id=c, model=models[c], data=tiny_dataset(models[c].examples))
        secagg = (Meddler if c == ids[0] else SecAggClientPod)(
            client_id=c, participants=ids, settings=settings)
        clients.append((pod, transport, secagg))
    srv = server(ids, rounds=2, min_clients=4)
    with caplog.at_level(logging.WARNING):
        history = await run_secure_aggregation_job(srv, transport, clients, settings)

    per_round = {"secagg_out_of_step": 1, "unknown_sender": 1, "secagg_malformed": 1,
                 "duplicate": 1, "stale_round": 1}
    assert [(r.status, r.accepted) for r in history] == [("ok", 4), ("ok", 4)]
    assert history[0].rejected == per_round
    assert history[1].rejected == {**per_round, "stale_round": 2}  # and the round before
    weights = {c: models[c].examples for c in ids}  # the meddler's honest input counts too
    for k in SHAPES:
        expected = sum(weights[c] * models[c].expected(2)[k] for c in ids) / sum(weights.values())
        np.testing.assert_allclose(srv.params[k], expected, atol=1e-4)
    refusals = [r for r in caplog.records if "refused a message" in r.getMessage()]
    assert len(refusals) == 11
    assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"


async def test_a_client_leaves_the_sum_on_a_malformed_server_message_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = [f"client-{i:03d}" for i in range(3)]
    pod = SecAggClientPod(client_id=ids[0], participants=ids,
                          settings=SecureSumSettings(max_dropouts=0))
    sent: list[Message] = []

    async def capture(wire: str, msg: Message) -> None:
        sent.append(msg)

    pod.send = capture  # type: ignore[method-assign]
    await pod.on_in(Message.create(Kind.UPDATE, job_id="j", round=1, sender=ids[0],
                                   params={"w": np.ones(3)}, num_examples=5))
    assert [m.meta[STEP] for m in sent] == ["advertise"]
    roster = Message.create(Kind.CONTROL, job_id="j", round=1, sender="secagg_server",
                            meta={STEP: "roster", "keys": {"one": [b"", b""]}})
    with caplog.at_level(logging.WARNING):
        await pod.on_down(roster)  # int("one") raised out of the handler before
    assert pod.rejected == {"secagg_malformed": 1} and len(sent) == 1
    assert not [r for r in caplog.records if r.exc_info]


def test_the_server_pod_names_every_reason_it_counts() -> None:
    pod = SecAggServerPod(job_id="j", template={"w": np.zeros(2)}, participants=["a", "b"],
                          settings=SecureSumSettings(max_dropouts=0))
    assert pod.rejected == {} and pod.take_pending() == {}
