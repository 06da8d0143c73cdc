"""The MQTT transport on a real mosquitto: the contract, chunking, TLS/mTLS, restarts, a job."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.config.spec import ClientSection, DataSection, JobSpec, Plugin
from foedus.core.errors import ConfigError, TransportError
from foedus.runner import run_job
from foedus.transport.chunks import HEADER, ChunkHeader, digest, split
from foedus.transport.mqtt import MqttTransport
from foedus.transport.tls import TLSConfig
from tests.transport.contract import MakeTransport, TransportContract, take, topic
from tests.transport.mqtt_fixtures import (
    BROKER_MAX_PACKET,
    Mosquitto,
    mosquitto,
    mqtt_certs,
    own_mosquitto,
)

__all__ = ["mosquitto", "mqtt_certs", "own_mosquitto"]  # fixtures used by name

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


class TestMqttTransport(TransportContract):
    """The contract over a plain listener whose maximum packet is 1 MiB, so big payloads chunk."""

    payload_sizes = (0, 1, 1000, BROKER_MAX_PACKET - 10, 3 * MiB, 5 * MiB + 7)

    def options(self, broker: Mosquitto) -> dict[str, Any]:
        return {"port": broker.plain_port}

    @pytest.fixture
    async def make_transport(self, mosquitto: Mosquitto) -> AsyncIterator[MakeTransport]:
        opened: list[MqttTransport] = []

        async def make() -> MqttTransport:
            t = MqttTransport(**self.options(mosquitto))
            opened.append(t)
            return t

        yield make
        for t in opened:
            await t.close()


class TestMqttTransportOverMutualTLS(TestMqttTransport):
    """The same contract over the listener that requires a client certificate."""

    payload_sizes = (0, 1000, 3 * MiB)

    @pytest.fixture(autouse=True)
    def _certs(self, mqtt_certs: DeploymentCerts) -> None:
        self.certs = mqtt_certs

    def options(self, broker: Mosquitto) -> dict[str, Any]:
        return {"port": broker.mtls_port, "tls": self.certs.client_tls("client-000")}


# ---- chunking, integrity and limits ---------------------------------------------------------


async def test_chunk_size_follows_the_broker_announced_maximum(mosquitto: Mosquitto) -> None:
    t = MqttTransport(port=mosquitto.plain_port, chunk_size=8 * MiB)
    try:
        conn = await t._publisher()
        assert conn.max_packet == BROKER_MAX_PACKET
        assert t.data_bytes_per_chunk(conn, "foedus/d/x") < BROKER_MAX_PACKET - HEADER.size
    finally:
        await t.close()


async def test_hundred_megabyte_payload_round_trips(mosquitto: Mosquitto) -> None:
    pub, sub_t = (MqttTransport(port=mosquitto.plain_port) for _ in range(2))
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        payload = bytes(range(256)) * (100 * MiB // 256) + b"tail"
        await pub.publish(t, payload, key="c1")
        [got] = await take(sub, 1, timeout=120)
        assert got == payload
    finally:
        await pub.close()
        await sub_t.close()


async def test_publisher_refuses_payload_above_max_payload(mosquitto: Mosquitto) -> None:
    t = MqttTransport(port=mosquitto.plain_port, max_payload=1000)
    try:
        with pytest.raises(TransportError, match="exceeds max_payload=1000"):
            await t.publish(topic(), bytes(1001))
    finally:
        await t.close()


async def _raw_publish(broker: Mosquitto, mqtt_topic: str, *payloads: bytes) -> None:
    """Publish bytes that did not come from the foedus transport (a foreign or broken sender)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.plain_port)
    client.loop_start()
    try:
        for p in payloads:
            client.publish(mqtt_topic, p, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_garbage_payload_is_dropped_and_counted_not_delivered(mosquitto: Mosquitto) -> None:
    pub, sub_t = (MqttTransport(port=mosquitto.plain_port) for _ in range(2))
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        await asyncio.to_thread(asyncio.run, _raw_publish(mosquitto, f"foedus/d/{t}", b"junk" * 30))
        await pub.publish(t, b"valid")
        assert await take(sub, 1) == [b"valid"]
        assert sub.rejected == {"malformed": 1}  # type: ignore[attr-defined]
    finally:
        await pub.close()
        await sub_t.close()


async def test_corrupted_payload_fails_the_digest_and_is_dropped(mosquitto: Mosquitto) -> None:
    pub, sub_t = (MqttTransport(port=mosquitto.plain_port) for _ in range(2))
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        [(h, data)] = split(b"original bytes", 1024, digest(b"original bytes"))
        tampered = h.pack() + bytes(data).replace(b"original", b"tampered")
        await asyncio.to_thread(asyncio.run, _raw_publish(mosquitto, f"foedus/d/{t}", tampered))
        await pub.publish(t, b"next")
        assert await take(sub, 1) == [b"next"]
        assert sub.rejected == {"corrupt": 1}  # type: ignore[attr-defined]
    finally:
        await pub.close()
        await sub_t.close()


async def test_receiver_drops_announced_payload_above_its_own_limit(mosquitto: Mosquitto) -> None:
    pub = MqttTransport(port=mosquitto.plain_port)
    sub_t = MqttTransport(port=mosquitto.plain_port, max_payload=2 * MiB, max_buffer=2 * MiB)
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        await pub.publish(t, bytes(3 * MiB))  # the receiver never allocates 3 MiB for it
        await pub.publish(t, b"small")
        assert await take(sub, 1) == [b"small"]
        assert sub.rejected["oversized"] >= 1  # type: ignore[attr-defined]
    finally:
        await pub.close()
        await sub_t.close()


async def test_partial_payload_of_a_dead_sender_is_cleaned_up(mosquitto: Mosquitto) -> None:
    sub_t = MqttTransport(port=mosquitto.plain_port, partial_timeout=0.2)
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        first, _second = split(bytes(4000), 2000)  # the sender dies after the first chunk
        wire = first[0].pack() + bytes(first[1])
        await asyncio.to_thread(asyncio.run, _raw_publish(mosquitto, f"foedus/d/{t}", wire))
        for _ in range(100):
            if sub.rejected.get("incomplete"):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert sub.rejected == {"incomplete": 1}  # type: ignore[attr-defined]
        assert not len(sub.reassembly)  # type: ignore[attr-defined]
        assert sub._buffered == 0  # type: ignore[attr-defined]
    finally:
        await sub_t.close()


def test_chunk_header_rejects_inconsistent_offsets() -> None:
    [(h, _)] = split(b"abc", 1024)
    bad = ChunkHeader(h.msg_id, 0, 1, 2, 3, h.digest).pack()  # offset 2 + 3 > total 3
    with pytest.raises(ValueError, match="overruns"):
        ChunkHeader.unpack(bad, 3)


async def test_shorter_retained_value_replaces_a_chunked_one_completely(
    mosquitto: Mosquitto,
) -> None:
    pub, late_t = (MqttTransport(port=mosquitto.plain_port) for _ in range(2))
    try:
        t = topic()
        await pub.publish(t, bytes(3 * MiB), retain=True)  # four chunks retained
        await pub.publish(t, b"small model", retain=True)  # one chunk, the rest cleared
        late = await late_t.subscribe(t)
        assert await take(late, 1) == [b"small model"]
        with pytest.raises(TimeoutError):
            await take(late, 1, timeout=0.5)
        assert not len(late.reassembly)  # type: ignore[attr-defined]  # no stale chunk lingers
    finally:
        await pub.close()
        await late_t.close()


# ---- TLS and mutual TLS -------------------------------------------------------------------


async def test_plaintext_client_is_refused_by_a_tls_listener(mosquitto: Mosquitto) -> None:
    t = MqttTransport(port=mosquitto.tls_port, connect_timeout=3)
    try:
        with pytest.raises(TransportError, match=r"refused|did not accept"):
            await t.publish(topic(), b"x")
    finally:
        await t.close()


async def test_server_authenticated_tls_round_trips(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts
) -> None:
    pub, sub_t = (MqttTransport(port=mosquitto.tls_port, tls=mqtt_certs.client_tls())
                  for _ in range(2))
    try:
        t = topic()
        sub = await sub_t.subscribe(t)
        await pub.publish(t, b"over tls")
        assert await take(sub, 1) == [b"over tls"]
    finally:
        await pub.close()
        await sub_t.close()


async def test_client_without_a_certificate_is_refused_by_mutual_tls(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts
) -> None:
    t = MqttTransport(port=mosquitto.mtls_port, tls=mqtt_certs.client_tls(), connect_timeout=3)
    try:
        with pytest.raises(TransportError, match="refused"):
            await t.publish(topic(), b"x")
    finally:
        await t.close()


async def test_client_certificate_from_another_ca_is_refused(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts, tmp_path: Path
) -> None:
    rogue = create_deployment_certs(tmp_path / "rogue", ["client-000"])  # same name, other CA
    tls = TLSConfig(mqtt_certs.ca, *rogue.clients["client-000"])
    t = MqttTransport(port=mosquitto.mtls_port, tls=tls, connect_timeout=3)
    try:
        with pytest.raises(TransportError, match="refused"):
            await t.publish(topic(), b"x")
    finally:
        await t.close()


async def test_client_refuses_a_broker_signed_by_an_unknown_ca(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    other = create_deployment_certs(tmp_path / "other", ["a"])
    t = MqttTransport(port=mosquitto.tls_port, tls=other.client_tls(), connect_timeout=3)
    try:
        with pytest.raises(TransportError, match="certificate verify failed"):
            await t.publish(topic(), b"x")
    finally:
        await t.close()


def test_missing_certificate_file_is_a_config_error_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"CA file .*does not exist"):
        MqttTransport(tls={"ca": str(tmp_path / "nope.pem")})
    with pytest.raises(ConfigError, match="unknown tls option"):
        MqttTransport(tls={"ca": str(tmp_path / "ca.pem"), "certificate": "x"})


# ---- broker restarts -------------------------------------------------------------------


async def test_subscriptions_and_groups_survive_a_broker_restart(own_mosquitto: Mosquitto) -> None:
    opts = {"port": own_mosquitto.plain_port, "reconnect_max_delay": 1}
    pub, plain_t, group_t = (MqttTransport(**opts) for _ in range(3))  # type: ignore[arg-type]
    try:
        t = topic()
        plain = await plain_t.subscribe(t)
        grouped = await group_t.subscribe(t, group=f"g-{uuid.uuid4().hex[:6]}")
        await pub.publish(t, b"before")
        assert await take(plain, 1) == [b"before"]
        assert await take(grouped, 1) == [b"before"]
        await asyncio.to_thread(own_mosquitto.restart)
        await pub.publish(t, b"after", key="c1")  # waits for the publisher to reconnect
        assert await take(grouped, 1, timeout=30) == [b"after"]
        assert await take(plain, 1, timeout=30) == [b"after"]  # resubscribed on a fresh session
    finally:
        for tr in (pub, plain_t, group_t):
            await tr.close()


# ---- a federated job over MQTT ---------------------------------------------------------


async def test_federated_job_reaches_demo_accuracy_over_mutual_tls_mqtt(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts
) -> None:
    cert, key = mqtt_certs.clients["client-000"]
    spec = JobSpec(
        job_id=f"mqtt-{uuid.uuid4().hex[:8]}", rounds=3, round_timeout=30,
        data=DataSection(dataset="digits"), clients=ClientSection(count=3),
        transport=Plugin("mqtt", {
            "port": mosquitto.mtls_port,
            "tls": {"ca": str(mqtt_certs.ca), "cert": str(cert), "key": str(key)},
        }),
    )
    result = await run_job(spec)
    assert len(result.history) == 3
    assert all(r.accepted == 3 for r in result.history)
    assert result.final_metrics["accuracy"] > 0.8


# ---- identities: a client cannot publish under another participant's name -----------------


def _update(sender: str) -> bytes:
    from foedus.codec import encode
    from foedus.core.message import Kind, Message

    return encode(Message.create(Kind.UPDATE, job_id="j", round=1, sender=sender))


async def test_verify_sender_accepts_own_name_and_rejects_impersonation(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts
) -> None:
    def transport(participant: str) -> MqttTransport:
        return MqttTransport(port=mosquitto.mtls_port, tls=mqtt_certs.client_tls(participant),
                             verify_sender=True, sender_aliases={"fl-server": "server"})

    alice, server = transport("client-000"), transport("fl-server")
    try:
        t = topic()
        sub = await server.subscribe(t)
        await alice.publish(t, _update("client-001"))  # claims to be someone else
        await alice.publish(t, b"not a foedus message")
        honest = _update("client-000")
        await alice.publish(t, honest)
        assert await take(sub, 1) == [honest]
        assert sub.rejected == {"impersonation": 2}  # type: ignore[attr-defined]
    finally:
        await alice.close()
        await server.close()


async def test_broker_acl_stops_publishing_on_another_identity_topic(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts
) -> None:
    import paho.mqtt.client as mqtt

    server = MqttTransport(port=mosquitto.mtls_port, tls=mqtt_certs.client_tls("fl-server"),
                           verify_sender=True)
    forger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    forger.tls_set_context(mqtt_certs.client_tls("client-000").client_context())
    try:
        t = topic()
        sub = await server.subscribe(t)
        forger.connect("127.0.0.1", mosquitto.mtls_port)
        forger.loop_start()
        forged = _update("client-001")
        [(h, data)] = split(forged, 1 << 20, digest(forged))
        info = forger.publish(f"foedus/d/{t}/from/client-001", h.pack() + bytes(data), qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        with pytest.raises(TimeoutError):  # the broker dropped it (ACL), nothing arrives
            await take(sub, 1, timeout=0.5)
        own = _update("client-000")  # the same forger under its own name gets through
        [(h, data)] = split(own, 1 << 20, digest(own))
        info = forger.publish(f"foedus/d/{t}/from/client-000", h.pack() + bytes(data), qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert await take(sub, 1) == [own]
    finally:
        forger.disconnect()
        forger.loop_stop()
        await server.close()


def test_verify_sender_requires_a_client_certificate(mqtt_certs: DeploymentCerts) -> None:
    with pytest.raises(ConfigError, match="verify_sender needs mutual TLS"):
        MqttTransport(tls=mqtt_certs.client_tls(), verify_sender=True)


# ---- separate processes: 1 server and 3 clients, each with its own certificate ------------


def _spawn(job: dict[str, Any], certs: Path, role: str, index: int = 0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.transport.mqtt_actor", json.dumps(job), str(certs), role,
         str(index)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"{role} {index} did not start: {line!r}")
    return proc


def _rounds(server: subprocess.Popen[str]) -> list[dict[str, Any]]:
    assert server.stdout is not None
    records = []
    for line in server.stdout:
        if line.strip() == "done":
            break
        records.append(json.loads(line))
    return records


async def test_separate_processes_train_over_mqtt_with_verified_identities(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts
) -> None:
    job = {
        "job_id": f"mqtt-mp-{uuid.uuid4().hex[:6]}", "seed": 0, "rounds": 4, "round_timeout": 60,
        "data": {"dataset": "digits", "partition": "iid"}, "clients": {"count": 3},
        "transport": {"type": "mqtt", "params": {
            "port": mosquitto.mtls_port, "verify_sender": True,
            "sender_aliases": {"fl-server": "server"},
        }},
    }
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(3):
            procs.append(_spawn(job, mqtt_certs.out, "client", i))
        server = _spawn(job, mqtt_certs.out, "server")
        procs.append(server)
        history = await asyncio.to_thread(_rounds, server)
        assert await asyncio.to_thread(server.wait, 60) == 0
        for client in procs[:3]:
            assert await asyncio.to_thread(client.wait, 30) == 0  # the stop message reached it
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert all(r["accepted"] == 3 and not r.get("rejected") for r in history)
    assert history[-1]["metrics"]["accuracy"] > 0.85


# --------------------------------------------------------------------------------------------
# what a peer's claims cost: only the bytes it sends


_FLOOD = """
import sys, uuid
import paho.mqtt.client as mqtt
from foedus.transport.chunks import ChunkHeader
port, mqtt_topic, claim, empty, one_byte = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
payloads = [ChunkHeader(uuid.uuid4().bytes, 0, claim // 4096 + 1, 0, claim).pack()
            for _ in range(empty)]
payloads += [ChunkHeader(uuid.uuid4().bytes, 0, claim, 0, claim).pack() + b"x"
             for _ in range(one_byte)]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.max_inflight_messages_set(200)
client.connect("127.0.0.1", int(port))
client.loop_start()
for info in [client.publish(mqtt_topic, p, qos=1) for p in payloads]:
    info.wait_for_publish(60)
client.disconnect()
client.loop_stop()
print(sum(len(p) for p in payloads))
"""


def _flood(broker: Mosquitto, mqtt_topic: str, claim: int, empty: int, one_byte: int) -> int:
    """An attacker in its own process (so only the receiver's memory is measured here): chunk
    headers claiming ``claim`` bytes, ``empty`` without data and ``one_byte`` with one byte.
    Returns the bytes of MQTT payload it sent."""
    run = subprocess.run(
        [sys.executable, "-c", _FLOOD, str(broker.plain_port), mqtt_topic, str(claim),
         str(empty), str(one_byte)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return int(run.stdout.strip())


_RECEIVER = """
import asyncio, gc, json, sys
import psutil
from foedus.transport.mqtt import MqttTransport

async def main(port, topic, expected):
    t = MqttTransport(port=port)
    sub = await t.subscribe(topic)
    gc.collect()
    before = psutil.Process().memory_info().rss
    print("ready", flush=True)
    r, reassembly = sub.rejected, sub.reassembly
    while r.get("malformed", 0) + r.get("evicted", 0) + len(reassembly) < expected:
        await asyncio.sleep(0.05)  # polls a counter; the test's own timeout bounds the wait
    gc.collect()
    report = {"grown": psutil.Process().memory_info().rss - before, "rejected": dict(r),
              "partials": len(reassembly), "held": reassembly.held,
              "max_partials": t.max_partials}
    print(json.dumps(report), flush=True)
    print((await anext(aiter(sub))).decode(), flush=True)
    await t.close()

asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
"""


async def test_chunk_headers_claiming_gigabytes_cost_only_the_bytes_sent(
    mosquitto: Mosquitto,
) -> None:
    """The attack run held 3.3 GiB after four 80-byte headers each claiming 1 GiB: the buffer
    was allocated from the claim. Now a partial payload holds what arrived, and at most
    ``max_partials`` of them are open (the oldest evicted), so the receiver grows by a small
    multiple of what the attacker actually sent, and an honest payload still arrives. The
    receiver and the attacker are processes of their own, so only the receiver is measured."""
    pub = MqttTransport(port=mosquitto.plain_port)
    t = topic()
    claim = 1024**3 - 1  # just under the default max_payload of 1 GiB
    empty, one_byte = 4, 20_000
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER, str(mosquitto.plain_port), t, str(empty + one_byte)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert receiver.stdout is not None
        assert (await asyncio.to_thread(receiver.stdout.readline)).strip() == "ready"
        sent = await asyncio.to_thread(_flood, mosquitto, f"foedus/d/{t}", claim, empty,
                                       one_byte)
        report = json.loads(await asyncio.wait_for(
            asyncio.to_thread(receiver.stdout.readline), 120))
        await pub.publish(t, b"honest")
        honest = await asyncio.wait_for(asyncio.to_thread(receiver.stdout.readline), 30)
    finally:
        await pub.close()
        receiver.kill()
        receiver.wait()
    r = report["rejected"]
    assert r["malformed"] == empty  # an empty chunk of a non-empty payload: refused at once
    assert report["partials"] == report["max_partials"]
    assert r["evicted"] == one_byte - report["max_partials"]
    assert report["held"] == report["max_partials"]  # one byte each, not a GiB each
    # RSS: the attacker claimed 20,004 GiB; one claimed GiB used to cost a GiB. What remains is
    # the allocator's churn from 20,000 MQTT messages crossing paho's thread (about 50 MiB with
    # glibc's per-thread arenas, 13 MiB with MALLOC_ARENA_MAX=1), not the claims: the
    # reassembler itself holds one byte per partial, asserted above.
    assert report["grown"] < 96 * 1024**2, f"RSS grew by {report['grown']} for {sent} bytes"
    assert honest.strip() == "honest"
