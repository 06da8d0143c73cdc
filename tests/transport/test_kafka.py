# ruff: noqa: F811  (pytest fixtures imported from kafka_fixtures are parameters here)
"""The Kafka transport against a real broker (Tansu): the contract, chunking, retained values,
committed offsets, TLS / mutual TLS through stunnel, and a federated job over Kafka."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from foedus.certs import DeploymentCerts
from foedus.config.spec import ClientSection, DataSection, JobSpec, Plugin
from foedus.core.errors import ConfigError, TransportError
from foedus.roles.checkpoint import Checkpointer
from foedus.runner import run_job
from foedus.testing import wait_until
from foedus.transport.base import transports
from foedus.transport.chunks import digest, split
from foedus.transport.kafka import (
    CHUNK_HEADER,
    DEFAULT_CHUNK_SIZE,
    KAFKA_DEFAULT_MAX_MESSAGE,
    POINTER_SUFFIX,
    SERVER_ERROR_RETRIES,
    KafkaTransport,
    parse_url,
)
from tests.conftest import free_port
from tests.transport.contract import MakeTransport, TransportContract, take, topic
from tests.transport.kafka_fixtures import (  # noqa: F401  (fixtures)
    Tansu,
    kafka_certs,
    tansu,
    tansu_mtls,
    tansu_s3,
    tansu_tls,
)

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ at every position mod 251, so a misplaced chunk is caught."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


class TestKafkaTransport(TransportContract):
    """The contract on a plaintext broker; the largest payloads are chunked (1 MB chunks)."""

    payload_sizes: tuple[int, ...] = (0, 1, 1000, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1,
                                      3 * MiB, 5 * MiB + 7)

    def options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture
    def broker(self, tansu: Tansu) -> Tansu:
        return tansu

    @pytest.fixture
    async def make_transport(self, broker: Tansu) -> AsyncIterator[MakeTransport]:
        opened: list[KafkaTransport] = []

        async def make() -> KafkaTransport:
            t = KafkaTransport(broker.bootstrap, **self.options())
            opened.append(t)
            return t

        yield make
        for t in opened:
            await t.close()


class TestKafkaTransportOverTLS(TestKafkaTransport):
    """The same contract through stunnel: the client verifies the broker's certificate."""

    payload_sizes = (0, 1000, 3 * MiB)

    @pytest.fixture(autouse=True)
    def _certs(self, kafka_certs: DeploymentCerts) -> None:
        self.certs = kafka_certs

    def options(self) -> dict[str, Any]:
        return {"tls": self.certs.client_tls()}

    @pytest.fixture
    def broker(self, tansu_tls: Tansu) -> Tansu:
        return tansu_tls


class TestKafkaTransportOverMutualTLS(TestKafkaTransportOverTLS):
    """The same contract where the broker requires a client certificate signed by the CA."""

    def options(self) -> dict[str, Any]:
        return {"tls": self.certs.client_tls("client-000")}

    @pytest.fixture
    def broker(self, tansu_mtls: Tansu) -> Tansu:
        return tansu_mtls


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
async def kafka(tansu: Tansu) -> AsyncIterator[Any]:
    """A factory of transports on the shared broker, all closed afterwards."""
    opened: list[KafkaTransport] = []

    def make(**options: Any) -> KafkaTransport:
        t = KafkaTransport(tansu.bootstrap, **options)
        opened.append(t)
        return t

    yield make
    for t in opened:
        await t.close()


async def raw_producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=64 * MiB)
    await producer.start()
    return producer


async def raw_records(bootstrap: str, name: str) -> list[Any]:
    """Every record of partition 0 of a topic, read with a bare aiokafka consumer."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, max_partition_fetch_bytes=64 * MiB,
                                fetch_max_bytes=64 * MiB)
    await consumer.start()
    try:
        tp = TopicPartition(name, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        out: list[Any] = []
        while len(out) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            out.extend(batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


async def send_chunks(producer: Any, name: str, records: list[tuple[Any, Any]],
                      order: list[int]) -> None:
    for i in order:
        header, data = records[i]
        await (await producer.send(name, bytes(data), key=b"k",
                                   headers=[(CHUNK_HEADER, header.pack())]))


# --------------------------------------------------------------------------------------------
# configuration


def test_is_registered_as_kafka() -> None:
    assert transports.get("kafka") is KafkaTransport


def test_url_carries_servers_and_security_settings(kafka_certs: DeploymentCerts) -> None:
    servers, tls, settings = parse_url(
        "kafkas://b1:9093,b2:9093?sasl_mechanism=SCRAM-SHA-512&sasl_username=fl&sasl_password=p%40ss"
    )
    assert servers == ["b1:9093", "b2:9093"]
    assert tls is True
    assert settings == {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "fl",
                        "sasl_password": "p@ss"}
    t = KafkaTransport(f"kafkas://127.0.0.1:9093?ca={kafka_certs.ca}&sasl_mechanism=PLAIN"
                       "&sasl_username=u&sasl_password=pw")
    options = t.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_username"] == "u"
    assert options["ssl_context"] is not None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bootstrap": ""}, "at least one host:port"),
    ({"bootstrap": "nohost"}, "not host:port"),
    ({"bootstrap": "http://x:1"}, "scheme"),
    ({"bootstrap": "kafka://x:1?colour=red"}, "unknown setting 'colour'"),
    ({"chunk_size": 10}, "chunk_size"),
    ({"max_payload": 10, "max_buffer": 5}, "max_buffer"),
    ({"sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"}, "GSSAPI"),
    ({"sasl_mechanism": "PLAIN"}, "sasl_username"),
    ({"tls": {"ca": "/does/not/exist.pem"}}, "does not exist"),
])
def test_bad_settings_raise_a_config_error_naming_them(kwargs: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaTransport(**kwargs)


async def test_invalid_topic_names_are_refused(kafka: Any) -> None:
    t = kafka()
    with pytest.raises(TransportError, match="not a valid Kafka topic"):
        await t.publish("a/b", b"x")


# --------------------------------------------------------------------------------------------
# chunking


async def test_every_record_fits_the_default_broker_limit(kafka: Any, tansu: Tansu) -> None:
    """Tansu does not enforce max.message.bytes, so check what a default broker would see."""
    t = kafka()
    name = topic()
    payload = pattern(3 * MiB + 5)
    await t.publish(name, payload, key="client-1")
    records = await raw_records(tansu.bootstrap, name)
    assert len(records) == 4
    for r in records:
        size = len(r.value) + len(r.key) + sum(len(k) + len(v) for k, v in r.headers)
        assert size + 200 < KAFKA_DEFAULT_MAX_MESSAGE
    assert b"".join(r.value for r in records) == payload


async def test_duplicate_chunks_and_payloads_are_delivered_once(kafka: Any,
                                                                tansu: Tansu) -> None:
    sub_t = kafka(chunk_size=1024)
    name = topic()
    sub = await sub_t.subscribe(name)
    payload = pattern(3000)
    records = split(payload, 1024, digest(payload))
    producer = await raw_producer(tansu.bootstrap)
    try:
        await send_chunks(producer, name, records, [0, 0, 1, 1, 2, 2, 0, 1, 2])
        await (await producer.send(name, b"after"))
    finally:
        await producer.stop()
    assert await take(sub, 2) == [payload, b"after"]
    assert sub.duplicates >= 5  # type: ignore[attr-defined]


async def test_a_payload_resent_after_a_gap_is_still_delivered(kafka: Any,
                                                                tansu: Tansu) -> None:
    """A publish whose chunk 2 failed while chunk 3 was stored (the producer pipelines chunks)
    leaves a gap; the publisher then re-sends the whole payload under the same id. The gapped
    copy is dropped, the re-sent one delivered, once."""
    t = kafka(chunk_size=1024)
    name = topic()
    sub = await t.subscribe(name)
    payload = pattern(4000)
    records = split(payload, 1024, digest(payload))
    producer = await raw_producer(tansu.bootstrap)
    try:
        await send_chunks(producer, name, records, [0, 1, 3])  # chunk 2 failed
        await send_chunks(producer, name, records, [0, 1, 2, 3])  # the publish retried
        await (await producer.send(name, b"after"))
    finally:
        await producer.stop()
    assert await take(sub, 2) == [payload, b"after"]
    assert sub.rejected == {"gap": 1}  # type: ignore[attr-defined]


async def test_corrupted_payload_is_rejected_and_the_stream_goes_on(kafka: Any,
                                                                    tansu: Tansu) -> None:
    t = kafka()
    name = topic()
    sub = await t.subscribe(name)
    payload = pattern(3000)
    records = split(payload, 1024, digest(b"something else"))
    producer = await raw_producer(tansu.bootstrap)
    try:
        await send_chunks(producer, name, records, [0, 1, 2])
        await (await producer.send(name, b"fine"))
    finally:
        await producer.stop()
    assert await take(sub, 1) == [b"fine"]
    assert sub.rejected == {"corrupt": 1}  # type: ignore[attr-defined]


async def test_partial_payload_of_a_dead_sender_is_dropped_after_the_timeout(
    kafka: Any, tansu: Tansu
) -> None:
    t = kafka(partial_timeout=0.5)
    name = topic()
    sub = await t.subscribe(name)
    payload = pattern(5000)
    records = split(payload, 1024, digest(payload))
    producer = await raw_producer(tansu.bootstrap)
    try:
        await send_chunks(producer, name, records, [0, 1])  # the sender dies after 2 of 5
        # the fetcher drops the partial payload on its own once partial_timeout has passed;
        # "next" is sent only then, so it cannot count as the dead sender's next chunk
        await wait_until(lambda: sub.rejected.get("incomplete") == 1,  # type: ignore[attr-defined]
                         timeout=30, what="the partial payload is dropped as incomplete")
        await (await producer.send(name, b"next"))
    finally:
        await producer.stop()
    assert await take(sub, 1) == [b"next"]
    assert sub.rejected == {"incomplete": 1}  # type: ignore[attr-defined]
    assert sub.buffered == 0  # type: ignore[attr-defined]


async def test_receiving_memory_is_bounded_by_max_buffer(kafka: Any) -> None:
    pub, sub_t = kafka(), kafka(max_payload=3 * MiB, max_buffer=4 * MiB)
    name = topic()
    sub = await sub_t.subscribe(name)
    payloads = [pattern(3 * MiB, seed=i) for i in range(5)]
    for p in payloads:
        await pub.publish(name, p)
    got = []
    for _ in payloads:
        got.extend(await take(sub, 1))
        # what is tested: a slow consumer (a real pause, not a stand-in for a condition);
        # meanwhile the fetcher must wait for room, not hoard payloads beyond max_buffer
        await asyncio.sleep(0.3)
    assert got == payloads
    # the budget plus at most one chunk that arrived while checking it
    assert sub.peak_buffered <= 4 * MiB + DEFAULT_CHUNK_SIZE  # type: ignore[attr-defined]


async def test_oversized_payloads_are_refused_on_both_sides(kafka: Any, tansu: Tansu) -> None:
    small = kafka(max_payload=1000, max_buffer=1000)
    with pytest.raises(TransportError, match="exceeds max_payload"):
        await small.publish(topic(), b"x" * 1001)
    name = topic()
    sub = await small.subscribe(name)
    await kafka().publish(name, b"y" * 5000)
    await kafka().publish(name, b"ok")
    assert await take(sub, 1) == [b"ok"]
    assert sub.rejected == {"oversized": 1}  # type: ignore[attr-defined]


async def test_plain_kafka_records_are_delivered_as_payloads(kafka: Any, tansu: Tansu) -> None:
    t = kafka()
    name = topic()
    sub = await t.subscribe(name)
    producer = await raw_producer(tansu.bootstrap)
    try:
        await (await producer.send(name, b"from a plain producer"))
    finally:
        await producer.stop()
    assert await take(sub, 1) == [b"from a plain producer"]


async def test_200_mb_payload_passes_through_1_mb_chunks(kafka: Any) -> None:
    pub, sub_t = kafka(), kafka()
    name = topic()
    sub = await sub_t.subscribe(name)
    payload = os.urandom(200 * 1000 * 1000)
    await pub.publish(name, payload, key="client-1")
    [got] = await take(sub, 1, timeout=120)
    assert len(got) == len(payload)
    assert got == payload
    del got, payload
    await pub.delete_topics(name)  # memory storage keeps everything: give the RAM back


# --------------------------------------------------------------------------------------------
# retained values and groups


async def test_offline_client_gets_the_current_model_when_it_returns(kafka: Any) -> None:
    server = kafka()
    name = topic()
    for r in range(3):
        await server.publish(name, pattern(2 * MiB + r, seed=r), key="server", retain=True)
    await server.publish(name, b"not retained", key="server")
    client = kafka()  # comes back after everything was published
    sub = await client.subscribe(name)
    assert await take(sub, 1) == [pattern(2 * MiB + 2, seed=2)]
    await server.publish(name, b"round 4 model", key="server", retain=True)
    assert await take(sub, 1) == [b"round 4 model"]


async def test_retained_pointer_lives_in_a_compacted_side_topic(kafka: Any, tansu: Tansu) -> None:
    t = kafka()
    name = topic()
    await t.publish(name, b"m", retain=True)
    assert t.topic_configs(pointer=True) == {"cleanup.policy": "compact"}
    assert len(await raw_records(tansu.bootstrap, name + POINTER_SUFFIX)) == 1


async def test_missing_topic_with_creation_off_names_what_to_create(kafka: Any) -> None:
    t = kafka(create_topics=False)
    name = topic()
    with pytest.raises(TransportError, match=f"--topic {name} --partitions 1"):
        await t.publish(name, b"x")


async def test_group_resumes_after_a_crash_without_losing_updates(
    kafka: Any, tansu: Tansu
) -> None:
    """A server process killed mid-stream: its group resumes at the last committed offset, so
    the update it had not finished with comes again and nothing published meanwhile is lost."""
    name, group = topic(), f"server-{uuid.uuid4().hex[:6]}"
    script = textwrap.dedent(f"""
        import asyncio, sys
        from foedus.transport.kafka import KafkaTransport
        async def main():
            t = KafkaTransport({tansu.bootstrap!r})
            sub = await t.subscribe({name!r}, group={group!r})
            print("ready", flush=True)
            async for payload in sub:
                print(payload.decode(), flush=True)
                if payload == b"u2":
                    await asyncio.sleep(3600)  # still handling u2 when the process is killed
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        pub = kafka()
        for i in (1, 2):
            await pub.publish(name, f"u{i}".encode(), key=f"c{i}")
        assert [proc.stdout.readline().strip() for _ in range(2)] == [b"u1", b"u2"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    await pub.publish(name, b"u3", key="c3")  # arrives while the server is down
    sub = await kafka().subscribe(name, group=group)
    # u1 was consumed (the iterator moved past it); u2 was still being handled: at least once
    assert await take(sub, 2) == [b"u2", b"u3"]


async def test_commit_never_passes_a_payload_still_being_reassembled(
    kafka: Any, tansu: Tansu
) -> None:
    name, group = topic(), f"g-{uuid.uuid4().hex[:6]}"
    first = kafka(chunk_size=1024)
    sub = await first.subscribe(name, group=group)
    big = pattern(3000)
    records = split(big, 1024, digest(big))
    producer = await raw_producer(tansu.bootstrap)
    try:
        await send_chunks(producer, name, records, [0])  # a big update starts...
        await (await producer.send(name, b"small", key=b"other"))  # ...a small one overtakes
        assert await take(sub, 1) == [b"small"]
        await sub.close()  # clean close while the big one is half-way
        await first.close()
        await send_chunks(producer, name, records, [1, 2])  # the big one completes later
    finally:
        await producer.stop()
    resumed = await kafka(chunk_size=1024).subscribe(name, group=group)
    # the committed offset stayed at the big update's first chunk: it is complete now, and the
    # small one that overtook it comes again (at least once; receivers de-duplicate)
    assert await take(resumed, 2) == [b"small", big]


# --------------------------------------------------------------------------------------------
# a federated job over Kafka


async def test_federated_job_over_kafka_learns_digits(tansu: Tansu) -> None:
    spec = JobSpec(
        job_id=f"kafka-{uuid.uuid4().hex[:6]}", rounds=5, round_timeout=60.0,
        data=DataSection(dataset="digits", partition="iid"),
        clients=ClientSection(count=3, epochs=2),
        transport=Plugin("kafka", {"bootstrap": tansu.bootstrap}),
    )
    result = await asyncio.wait_for(run_job(spec), 120)
    assert len(result.history) == 5
    assert result.final_metrics["accuracy"] > 0.85


# --------------------------------------------------------------------------------------------
# separate processes: 1 server and 3 clients coordinated only through the broker


def job_file(tansu: Tansu, **overrides: Any) -> dict[str, Any]:
    return {
        "job_id": f"mp-{uuid.uuid4().hex[:6]}", "seed": 0, "rounds": 5, "round_timeout": 60,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 3, "epochs": 2},
        "transport": {"type": "kafka", "params": {"bootstrap": tansu.bootstrap}},
        **overrides,
    }


def spawn(job: dict[str, Any], role: str, index: int = 0) -> subprocess.Popen[str]:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.transport.kafka_actor", json.dumps(job), role, str(index)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"{role} {index} did not start: {line!r}")
    return proc


def rounds_of(server: subprocess.Popen[str], until: int | None = None) -> list[dict[str, Any]]:
    """The server's round records as it prints them, up to round ``until`` or the end."""
    import json

    assert server.stdout is not None
    records = []
    for line in server.stdout:
        if line.strip() == "done":
            break
        records.append(json.loads(line))
        if until is not None and records[-1]["round"] == until:
            break
    return records


def reap(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


async def test_separate_processes_train_as_well_as_in_process(tansu: Tansu) -> None:
    job = job_file(tansu)
    in_process = await run_job(JobSpec.from_dict({**job, "transport": "local"}))
    procs = [spawn(job, "client", i) for i in range(3)]
    try:
        server = spawn(job, "server")
        procs.append(server)
        history = await asyncio.to_thread(rounds_of, server)
        assert await asyncio.to_thread(server.wait, 60) == 0
        for client in procs[:3]:
            assert await asyncio.to_thread(client.wait, 30) == 0  # the stop message reached it
    finally:
        reap(*procs)
    assert [r["round"] for r in history] == [1, 2, 3, 4, 5]
    assert all(r["accepted"] == 3 for r in history)
    final = history[-1]["metrics"]["accuracy"]
    assert final == pytest.approx(in_process.final_metrics["accuracy"], abs=0.02)
    assert final > 0.85


async def test_a_client_killed_mid_job_does_not_stall_it(tansu: Tansu) -> None:
    job = job_file(tansu, rounds=4, round_timeout=2,
                   clients={"count": 3, "epochs": 1, "min_clients": 2})
    clients = [spawn(job, "client", i) for i in range(3)]
    server = spawn(job, "server")
    try:
        first = await asyncio.to_thread(rounds_of, server, 1)
        reap(clients[2])  # dies after round 1
        rest = await asyncio.to_thread(rounds_of, server)
    finally:
        reap(server, *clients)
    history = first + rest
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert history[0]["accepted"] == 3
    assert all(r["accepted"] == 2 and r["status"] != "no_quorum" for r in history[2:])


async def test_a_restarted_server_resumes_from_its_checkpoint(
    tansu: Tansu, tmp_path: Path
) -> None:
    job = job_file(tansu, rounds=8, checkpoint_dir=str(tmp_path))
    clients = [spawn(job, "client", i) for i in range(3)]
    try:
        server = spawn(job, "server")
        before = await asyncio.to_thread(rounds_of, server, 2)
        checkpoint = Checkpointer(tmp_path, job["job_id"])

        def round_2_saved() -> bool:
            saved = checkpoint.load()
            return saved is not None and saved.round >= 2

        await wait_until(round_2_saved, timeout=60, interval=0.05,
                         what="round 2 is checkpointed")
        reap(server)  # SIGKILL once round 2 is checkpointed
        # The server may have finished another round before the kill landed: the restart must
        # resume from whatever round the checkpoint on disk holds, not from round 2.
        saved = checkpoint.load()
        assert saved is not None and 2 <= saved.round < 8
        server = spawn(job, "server")
        after = await asyncio.to_thread(rounds_of, server)
        assert await asyncio.to_thread(server.wait, 60) == 0
    finally:
        reap(server, *clients)
    assert [r["round"] for r in before] == [1, 2]
    assert [r["round"] for r in after] == list(range(saved.round + 1, 9))
    assert all(r["accepted"] == 3 for r in after)
    assert after[-1]["metrics"]["accuracy"] > 0.85


# --------------------------------------------------------------------------------------------
# broker restarts (Tansu on S3 storage keeps topics and committed offsets across a restart)


async def test_reconnects_after_the_broker_restarts(
    tansu_s3: Tansu, caplog: pytest.LogCaptureFixture,
) -> None:
    """Contract-style: publisher and subscriber outlive a broker restart on the same port; a
    publish issued while the broker is down (longer than one request timeout) completes once it
    is back; nothing is lost or doubled."""
    options: dict[str, Any] = {"request_timeout": 1.5, "retry_backoff_ms": 100}
    pub = KafkaTransport(tansu_s3.bootstrap, **options)
    sub_t = KafkaTransport(tansu_s3.bootstrap, **options)
    try:
        t, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
        sub = await sub_t.subscribe(t, group=group)
        await pub.publish(t, b"before", key="c1")
        await pub.publish(t, pattern(3 * MiB), key="c1")
        assert await take(sub, 2) == [b"before", pattern(3 * MiB)]
        tansu_s3.kill_broker()
        caplog.set_level(logging.WARNING, logger="foedus.transport.kafka")
        during = asyncio.create_task(pub.publish(t, b"during the outage", key="c1"))

        def retrying() -> bool:
            return any(r.getMessage().startswith(f"publish to Kafka topic {t!r} failed (")
                       and r.getMessage().endswith("; retrying") for r in caplog.records)

        # a failed attempt (the broker is down) is retried, not reported as a failure
        await wait_until(lambda: retrying() or during.done(), timeout=60,
                         what="the publish fails once and retries")
        assert not during.done()  # retrying with backoff, not failed
        tansu_s3.start()
        await asyncio.wait_for(during, 60)
        await pub.publish(t, pattern(2 * MiB, seed=3), key="c1")
        assert await take(sub, 2, timeout=60) == [b"during the outage", pattern(2 * MiB, seed=3)]
        await pub.publish(t, b"last", key="c1")
        assert await take(sub, 1) == [b"last"]  # no duplicate of a re-sent payload in between
    finally:
        await pub.close()
        await sub_t.close()


def test_a_federated_job_survives_a_broker_restart(tansu_s3: Tansu, tmp_path: Path) -> None:
    """`foedus server` and two `foedus client` processes; the broker is SIGKILLed after
    round 1 and started again on the same port once the server has met the outage (its fetch
    failed, or it could not connect); the job still finishes all rounds with every client's
    update."""
    job = tmp_path / "job.yaml"
    job.write_text(textwrap.dedent(f"""\
        job_id: restart-{uuid.uuid4().hex[:6]}
        rounds: 3
        round_timeout: 60
        clients: {{count: 2, epochs: 1}}
        data: {{dataset: digits, partition: iid}}
        transport:
          type: kafka
          params: {{bootstrap: "{tansu_s3.bootstrap}", request_timeout: 2}}
        """))
    command = [sys.executable, "-m", "foedus.cli"]
    clients = [subprocess.Popen([*command, "client", str(job), "--index", str(i)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    # -v: the server logs its warnings ("fetch failed ... retrying") on stderr, where the test
    # reads that it met the outage
    server = subprocess.Popen([*command, "-v", "server", str(job)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        progress = []
        for line in server.stderr:  # one "round  N/5 ..." line per finished round
            progress.append(line)
            if line.startswith("round   1/3"):
                break
        tansu_s3.kill_broker()
        deadline = time.monotonic() + 120
        for line in server.stderr:  # a line each retry while the broker is away
            progress.append(line)
            if "fetch failed" in line or "connect" in line.lower():
                break
            assert time.monotonic() < deadline, "the server never noticed the outage"
        tansu_s3.start()
        summary, rest = server.communicate(timeout=120)
        assert server.returncode == 0, "".join(progress) + rest
        finished = [line.split()[1] for line in progress + rest.splitlines()
                    if line.startswith("round ")]
        assert finished == ["1/3", "2/3", "3/3"]
        errs = [c.communicate(timeout=60)[1] for c in clients]
        # a lost update shows in a client's stderr (the publish that failed), so show them
        assert "updates accepted 6" in summary, summary + "".join(errs)  # 2 clients x 3 rounds
        for c, err in zip(clients, errs, strict=True):
            assert c.returncode == 0, err
            assert "finished after 3 rounds" in err
    finally:
        for p in (server, *clients):
            if p.poll() is None:
                p.kill()
            p.wait()


def fail_sends(monkeypatch: pytest.MonkeyPatch, producer: Any, times: int) -> list[int]:
    """Make the first ``times`` sends of ``producer`` fail as a broker answering
    UNKNOWN_SERVER_ERROR does (Tansu on S3 when two producers race for one offset)."""
    from aiokafka.errors import UnknownError

    real_send = producer.send
    calls: list[int] = []

    async def send(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        calls.append(1)
        if len(calls) <= times:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(UnknownError())
            return failed
        sent: asyncio.Future[Any] = await real_send(*args, **kwargs)
        return sent

    monkeypatch.setattr(producer, "send", send)
    return calls


async def test_publish_resends_after_an_unknown_server_error(
    kafka: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka does not retry UNKNOWN_SERVER_ERROR; a lost update would follow (the uplink
    drops a payload whose publish raised). The transport re-sends it: delivered once."""
    pub, sub_t = kafka(retry_backoff_ms=10), kafka()
    name = topic()
    sub = await sub_t.subscribe(name)
    calls = fail_sends(monkeypatch, await pub._get_producer(), times=2)
    await pub.publish(name, b"update", key="client-1")
    await pub.publish(name, b"next", key="client-1")
    assert await take(sub, 2) == [b"update", b"next"]
    assert len(calls) == 4


async def test_publish_gives_up_on_a_broker_that_keeps_failing(
    kafka: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = kafka(retry_backoff_ms=10)
    await pub.publish(name := topic(), b"first")
    calls = fail_sends(monkeypatch, await pub._get_producer(), times=1000)
    with pytest.raises(TransportError, match="UnknownError"):
        await pub.publish(name, b"second")
    assert len(calls) == SERVER_ERROR_RETRIES + 1


async def test_publish_gives_up_after_reconnect_timeout(tmp_path: Path) -> None:
    """A broker that stays down: publish retries with backoff, then fails clearly (no hang)."""
    broker = Tansu(tmp_path / "tansu")
    broker.start()
    pub = KafkaTransport(broker.bootstrap, request_timeout=1, reconnect_timeout=2,
                         retry_backoff_ms=100)
    try:
        await pub.publish("gone", b"first")
        broker.stop()
        began = time.monotonic()
        with pytest.raises(TransportError, match="publish to Kafka topic 'gone' failed"):
            await pub.publish("gone", b"second")
        assert time.monotonic() - began < 15
    finally:
        broker.stop()
        await pub.close()


async def test_a_transport_whose_broker_went_down_closes_cleanly_and_logs_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Closing a subscription whose broker is gone raised aiokafka's CancelledError (its
    fetch task, cancelled in its backoff, leaks out of consumer.stop()): the rest of the
    transport stayed open ("Unclosed AIOKafkaProducer") and a job's end was a traceback.
    And aiokafka logged each failed reconnect, metadata update and fetch of the outage,
    ~90 lines a second: each of its lines now passes once per 30 s."""
    caplog.set_level(logging.WARNING)
    broker = Tansu(tmp_path / "tansu")
    broker.start()
    t = KafkaTransport(broker.bootstrap, request_timeout=1, reconnect_timeout=1,
                       retry_backoff_ms=100)
    try:
        await t.subscribe(name := topic())
        await t.publish(name, b"first")
        broker.stop()
        with pytest.raises(TransportError, match="publish to Kafka topic"):
            await t.publish(name, b"second")
    finally:
        broker.stop()
        await t.close()
    assert t._producer is None and not t._subs
    lines = aiokafka_lines(caplog, logging.WARNING)
    assert lines and len(lines) == len(set(lines)) <= 10, lines


# ---- an unreachable broker: foedus's one line, not aiokafka's log above it -----------------

def aiokafka_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("aiokafka") and r.levelno >= level]


async def test_an_unreachable_broker_is_one_line_of_foedus_with_aiokafkas_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka logged its own ERROR ('Unable connect to "127.0.0.1:P": ...') above foedus's
    error, whose own reason ("Unable to bootstrap from [...]") hid why. Now foedus's line says
    why, and aiokafka's record goes to DEBUG (foedus.transport.kafka) for whoever wants it."""
    caplog.set_level(logging.DEBUG)
    dead = f"127.0.0.1:{free_port()}"
    t = KafkaTransport(dead, request_timeout=2)
    try:
        with pytest.raises(TransportError, match=rf"^cannot connect the Kafka producer to {dead}:"
                                                 r" .*Connect call failed"):
            await t.publish("gone", b"x")
    finally:
        await t.close()
    assert aiokafka_lines(caplog, logging.WARNING) == []
    assert any("Unable connect" in r.getMessage() for r in caplog.records
               if r.name == "foedus.transport.kafka" and r.levelno == logging.DEBUG)


async def test_a_dead_bootstrap_server_beside_a_live_one_is_still_reported(
    tansu: Tansu, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the client connects anyway, foedus says nothing: aiokafka's error about the dead
    server is the only word of it, so it is kept as aiokafka logged it."""
    import aiokafka.conn

    # aiokafka shuffles the bootstrap servers; keep their order, so the dead one is tried first
    monkeypatch.setattr(aiokafka.conn, "random", type("InOrder", (), {
        "shuffle": staticmethod(lambda hosts: None)}))
    caplog.set_level(logging.WARNING)
    dead = f"127.0.0.1:{free_port()}"
    t = KafkaTransport(f"{dead},{tansu.bootstrap}", request_timeout=5)
    try:
        await t.publish(topic(), b"x")
    finally:
        await t.close()
    assert any(dead in line for line in aiokafka_lines(caplog, logging.ERROR))
