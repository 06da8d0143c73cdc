"""A Downlink survives whatever a payload does: it counts the refusal, logs one line, goes on."""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import numpy as np
import pytest

from foedus.codec import decode as codec_decode
from foedus.codec import encode
from foedus.core.errors import ConfigError
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.core.runtime import Runtime
from foedus.testing import wait_until
from foedus.transport import link as link_module
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink
from foedus.transport.local import LocalTransport

TOPIC = "foedus.job.updates"


def poison_frame() -> bytes:
    """The attack run's frame (about 150 bytes here, 192 with its longer names): CRC-valid, an
    array of shape [0, 2**64-1] that holds no bytes yet cannot be built by numpy."""
    header = {"job": "job", "round": 1, "sender": "mallory", "kind": "update", "id": "x",
              "ts": 1.0, "trail": [], "to": None, "n": 1, "metrics": {}, "meta": {},
              "error": None, "arrays": [["w", "<f4", [0, 2**64 - 1], 0, 0]]}
    packed = msgpack.packb(header, use_bin_type=True)
    padded = packed + bytes(-len(packed) % 8)
    return bytes(struct.pack("<4sB3sIQI", b"FOED", 1, bytes(3), len(packed), 0,
                             zlib.crc32(padded)) + padded)


def update(sender: str = "client-000", value: float = 1.0) -> bytes:
    return encode(Message.create(Kind.UPDATE, job_id="job", round=1, sender=sender,
                                 num_examples=1, params={"w": np.full(3, value)}))


class Sink(Pod):
    """Collects what the downlink emits."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

    def __init__(self) -> None:
        super().__init__("sink")
        self.got: asyncio.Queue[Message] = asyncio.Queue()

    async def on_in(self, msg: Message) -> None:
        await self.got.put(msg)


@dataclass
class Running:
    link: Downlink
    sink: Sink

    async def next(self, timeout: float = 10) -> Message:
        return await asyncio.wait_for(self.sink.got.get(), timeout)


@pytest.fixture
async def transport() -> AsyncIterator[LocalTransport]:
    t = LocalTransport()
    yield t
    await t.close()


async def run_downlink(
    transport: Transport, accept: Callable[[Message], bool] | None = None, **kw: Any,
) -> tuple[Runtime, Running]:
    down = Downlink(transport, TOPIC, job_id="job", accept=accept, name="updates_in", **kw)
    sink = Sink()
    graph = Graph().add(down, sink).connect("updates_in.out", "sink.in")
    runtime = Runtime(graph)
    await runtime.__aenter__()
    return runtime, Running(down, sink)


async def test_the_poison_frame_is_counted_and_the_next_message_still_arrives(
    transport: LocalTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    runtime, r = await run_downlink(transport)
    try:
        with caplog.at_level(logging.WARNING, "foedus.link"):
            await transport.publish(TOPIC, poison_frame())
            await transport.publish(TOPIC, update())
            msg = await r.next()
        assert msg.sender == "client-000"
        assert r.link.rejected == {"undecodable": 1}
        [line] = [rec for rec in caplog.records if rec.name == "foedus.link"]
        assert "too large" in line.getMessage() and line.exc_info is None  # one line, no trace
    finally:
        await runtime.__aexit__(None, None, None)


async def test_any_exception_from_the_decoder_is_counted_not_fatal(
    transport: LocalTransport, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second line behind the total decoder: should it ever raise something else (a bug),
    the reader still refuses the payload and goes on."""
    real = codec_decode

    def flaky(data: bytes, *, max_size: int) -> Message:
        if data == b"trigger":
            raise ValueError("a decoder bug")
        return real(data, max_size=max_size)

    monkeypatch.setattr(link_module, "decode", flaky)
    runtime, r = await run_downlink(transport)
    try:
        await transport.publish(TOPIC, b"trigger")
        await transport.publish(TOPIC, b"garbage")
        await transport.publish(TOPIC, update())
        assert (await r.next()).sender == "client-000"
        assert r.link.rejected == {"decode_error": 1, "undecodable": 1}
    finally:
        await runtime.__aexit__(None, None, None)


async def test_an_accept_predicate_that_raises_refuses_only_that_message(
    transport: LocalTransport,
) -> None:
    def accept(msg: Message) -> bool:
        if msg.sender == "odd":
            raise KeyError(msg.sender)
        return msg.sender != "not-for-me"

    runtime, r = await run_downlink(transport, accept)
    try:
        for sender in ("odd", "not-for-me", "client-000"):
            await transport.publish(TOPIC, update(sender))
        assert (await r.next()).sender == "client-000"
        assert r.link.rejected == {"accept_error": 1}
        assert r.link.skipped == 1
        assert r.link.messages_in == 1
    finally:
        await runtime.__aexit__(None, None, None)


async def test_wrong_job_and_garbage_keep_their_reasons(transport: LocalTransport) -> None:
    runtime, r = await run_downlink(transport)
    try:
        other = encode(Message.create(Kind.UPDATE, job_id="other", round=1, sender="x"))
        for payload in (other, b"\x00" * 40, update()):
            await transport.publish(TOPIC, payload)
        await r.next()
        await wait_until(lambda: r.link.messages_in == 1)
        assert r.link.rejected == {"wrong_job": 1, "undecodable": 1}
    finally:
        await runtime.__aexit__(None, None, None)


async def test_messages_beyond_the_bound_per_sender_and_round_are_refused_as_flood(
    transport: LocalTransport, caplog: pytest.LogCaptureFixture,
) -> None:
    """``per_round`` bounds what one name can make the server do in a round: the first
    messages pass, the rest are refused before anything downstream sees them, and the log
    holds at most LOG_PER_SECOND lines a second however many are refused."""
    runtime, r = await run_downlink(transport, per_round=3)
    flood = 200
    try:
        with caplog.at_level(logging.WARNING, "foedus.link"):
            for _ in range(flood):
                await transport.publish(TOPIC, update("mallory"))
            await transport.publish(TOPIC, update("client-000"))  # another sender: untouched
            got = [await r.next() for _ in range(4)]
            await wait_until(lambda: sum(r.link.rejected.values()) == flood - 3)
        assert [m.sender for m in got] == ["mallory"] * 3 + ["client-000"]
        assert r.link.rejected == {"flood": flood - 3}
        lines = [rec for rec in caplog.records if rec.name == "foedus.link"]
        assert len(lines) <= 2 * link_module.LOG_PER_SECOND  # (the flood may span 2 seconds)
    finally:
        await runtime.__aexit__(None, None, None)


async def test_a_link_without_a_sender_filter_in_its_transport_says_so(
    transport: LocalTransport,
) -> None:
    """The in-process transport cannot drop payloads before decoding: the link says so, and
    non-participants are left to the server's ``unknown_sender`` check."""
    runtime, r = await run_downlink(transport, senders=["client-000"])
    try:
        await transport.publish(TOPIC, update("mallory"))
        assert (await r.next()).sender == "mallory"
        assert not r.link.filters_senders
    finally:
        await runtime.__aexit__(None, None, None)


def test_the_bound_per_round_is_checked_when_the_link_is_made() -> None:
    with pytest.raises(ConfigError, match="per_round"):
        Downlink(LocalTransport(), TOPIC, per_round=0)


# ---- an Uplink whose publish is retrying a hub that is gone --------------------------------

@dataclass
class StuckUplink:
    """An actor (a runtime with one Uplink) whose publish retries an HTTPS hub that stopped."""

    uplink: Uplink
    runtime: Runtime
    transport: Transport
    hub: Any  # the stopped HttpsHub; start a new one on its port to bring it back


@pytest.fixture
async def stuck_uplink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[StuckUplink]:
    from foedus.certs import create_deployment_certs
    from foedus.transport.https import HttpsHub, HttpsTransport

    caplog.set_level(logging.WARNING)
    certs = create_deployment_certs(tmp_path, ["client-000"])
    hub = await HttpsHub("127.0.0.1", 0, certs.server_tls()).start()
    transport = HttpsTransport(hub.url, tls=certs.client_tls("client-000"), reconnect_timeout=60)
    try:
        await transport.publish(TOPIC, update())  # connected: the hub was there
        await hub.stop()
        uplink = Uplink(transport, TOPIC, name="update_out")
        stuck = StuckUplink(uplink, Runtime(Graph().add(uplink).expose("update_out.in")),
                            transport, hub)
        yield stuck
    finally:
        await transport.close()
        await stuck.hub.stop()


@pytest.mark.integration
async def test_a_cancelled_actor_ends_promptly_while_its_uplink_retries_a_gone_hub(
    stuck_uplink: StuckUplink, caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM, a job's timeout or Ctrl-C cancel the task running an actor, whose runtime then
    stops: it waited for every message already handed to its Uplink, so a publish retrying a
    hub that is gone held the actor for up to the transport's reconnect_timeout (60 s here)
    after it was told to end. The message is not sent, and the uplink says so."""
    runtime, uplink = stuck_uplink.runtime, stuck_uplink.uplink

    async def actor() -> None:
        async with runtime:
            await runtime.inject("update_out", "in", Message.create(
                Kind.UPDATE, job_id="job", round=2, sender="client-000"))
            await asyncio.Event().wait()  # the actor runs until it is told to end

    task = asyncio.create_task(actor())
    await wait_until(lambda: any("retrying" in r.getMessage() for r in caplog.records),
                     what="the uplink retries the hub that is gone")
    loop = asyncio.get_running_loop()
    told = loop.time()
    task.cancel()
    await asyncio.wait({task}, timeout=15)
    assert task.cancelled()
    assert loop.time() - told < 3.0
    assert uplink.messages_out == 0
    assert any("not delivered" in r.getMessage() and "update_out" in r.getMessage()
               for r in caplog.records if r.name == "foedus.link")


@pytest.mark.integration
async def test_a_graph_stopping_normally_still_delivers_what_its_uplink_is_retrying(
    stuck_uplink: StuckUplink, caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a cancelled actor gives up: a graph that ends by itself (a server after its last
    round) waits for its Uplink, whose retries carry the message once the hub is back."""
    from foedus.transport.https import HttpsHub

    runtime, uplink = stuck_uplink.runtime, stuck_uplink.uplink
    await runtime.start()
    await runtime.inject("update_out", "in", Message.create(
        Kind.CONTROL, job_id="job", round=3, sender="server"))
    await wait_until(lambda: any("retrying" in r.getMessage() for r in caplog.records),
                     what="the uplink retries the hub that is gone")
    stopping = asyncio.create_task(runtime.stop())
    old = stuck_uplink.hub
    stuck_uplink.hub = await HttpsHub(old.host, old.port, old.tls).start()
    await asyncio.wait_for(stopping, 15)
    assert uplink.messages_out == 1
