"""Throughput of the gRPC and HTTPS transports through an in-process hub, over mutual TLS.

For each transport and payload size: one client publishes N payloads while another, subscribed
to the topic, receives them; the clock runs from the first publish to the last payload received
(so it covers client -> hub upload, hub -> client download and reassembly). Hub and both clients
share one process and event loop on loopback, so the figures are an upper bound for a single
machine and a fair comparison *between* the two transports, not a network measurement.

    .venv/bin/python bench/grpc_https.py            # 4 MiB x 25 and 64 MiB x 3
    .venv/bin/python bench/grpc_https.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.transport.base import Transport
from foedus.transport.grpc import GrpcHub, GrpcTransport
from foedus.transport.https import HttpsHub, HttpsTransport

MiB = 1024 * 1024


async def measure(make: Callable[[], Transport], size: int, count: int) -> tuple[float, float]:
    """Returns (seconds publish->last receive, seconds for the publishes alone)."""
    pub, sub_t = make(), make()
    try:
        sub = await sub_t.subscribe("bench")
        payload = bytes(range(256)) * (size // 256)
        received = 0

        async def drain() -> None:
            nonlocal received
            async for p in sub:
                assert len(p) == size
                received += 1
                if received == count:
                    return

        began = time.perf_counter()
        reader = asyncio.create_task(drain())
        for _ in range(count):
            await pub.publish("bench", payload)
        published = time.perf_counter() - began
        await asyncio.wait_for(reader, 600)
        return time.perf_counter() - began, published
    finally:
        await pub.close()
        await sub_t.close()


async def run(sizes: list[tuple[int, int]], repeats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        certs: DeploymentCerts = create_deployment_certs(tmp, ["bench-client"])
        server_tls = certs.server_tls(require_client_cert=True)
        client_tls = certs.client_tls("bench-client")
        hubs: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[Any], Transport]]] = [
            ("grpc", lambda: GrpcHub("127.0.0.1", 0, server_tls).start(),
             lambda h: GrpcTransport(h.address, tls=client_tls)),
            ("https", lambda: HttpsHub("127.0.0.1", 0, server_tls).start(),
             lambda h: HttpsTransport(h.url, tls=client_tls)),
        ]
        for name, start, client in hubs:
            hub = await start()
            try:
                await measure(lambda h=hub, c=client: c(h), MiB, 3)  # warm up
                for size, count in sizes:
                    best = None
                    for _ in range(repeats):
                        total, published = await measure(
                            lambda h=hub, c=client: c(h), size, count)
                        if best is None or total < best[0]:
                            best = (total, published)
                    assert best is not None
                    moved = size * count / 1e6
                    rows.append({
                        "transport": name, "payload_mib": size // MiB, "count": count,
                        "end_to_end_mb_s": moved / best[0], "publish_mb_s": moved / best[1],
                        "seconds": best[0],
                    })
            finally:
                await hub.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, fewer payloads")
    args = parser.parse_args()
    sizes = [(4 * MiB, 10), (64 * MiB, 2)] if args.quick else [(4 * MiB, 25), (64 * MiB, 3)]
    rows = asyncio.run(run(sizes, repeats=1 if args.quick else 3))
    print("| transport | payload | payloads | end-to-end MB/s | publish MB/s | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['transport']} | {r['payload_mib']} MiB | {r['count']} | "
              f"{r['end_to_end_mb_s']:.0f} | {r['publish_mb_s']:.0f} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
