"""The MQTT transport through a real mosquitto on loopback: uploads, model broadcast, one round.

Measured, for plain TCP and mutual TLS, and for two broker packet limits (1 MiB, which forces
~1 MiB chunks, and mosquitto's default of no limit, where the transport's 4 MiB chunks apply):

Publisher connections are opened before the clock starts (a warm-up publish).

* **upload**: one client publishes one update of 10 MiB / 100 MiB; the clock runs from publish
  to the server's subscription handing out the reassembled, digest-checked payload;
* **broadcast**: the server publishes a 10 MiB model with ``retain=True``; the clock stops when
  the last of 10 subscribed clients has it;
* **round**: 10 clients each upload a 10 MiB update concurrently, then the server broadcasts a
  10 MiB model to all 10: the communication time of one 10-client round.

Everything (broker, 11 transports, event loop) runs on this one machine, so the figures are an
upper bound on loopback, useful to compare transports and settings, not a network measurement.

    .venv/bin/python bench/mqtt.py           # median of 3
    .venv/bin/python bench/mqtt.py --quick   # one repetition, 10 MiB only
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.* (broker fixture)

from tests.conftest import free_port
from tests.transport.mqtt_fixtures import Mosquitto

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.transport.mqtt import MqttTransport

MiB = 1024 * 1024
CLIENTS = 10


def _payload(size: int, seed: int = 0) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[seed:seed + size]


async def upload(make: Callable[[str], MqttTransport], size: int) -> float:
    server, client = make("fl-server"), make("client-000")
    try:
        sub = await server.subscribe("updates", group="bench-server")
        payload = _payload(size)
        await client.publish("warm-up", b"")  # connect outside the clock
        began = time.perf_counter()
        await client.publish("updates", payload, key="client-000")
        got = await asyncio.wait_for(sub.__anext__(), 600)
        took = time.perf_counter() - began
        assert len(got) == size
        await sub.close()
        return took
    finally:
        await client.close()
        await server.close()


async def broadcast(make: Callable[[str], MqttTransport], size: int) -> float:
    server = make("fl-server")
    clients = [make(f"client-{i:03d}") for i in range(CLIENTS)]
    try:
        subs = [await c.subscribe("model-live") for c in clients]
        model = _payload(size, 1)
        await server.publish("warm-up", b"")
        began = time.perf_counter()
        await server.publish("model-live", model, retain=True)
        got = await asyncio.gather(*(asyncio.wait_for(s.__anext__(), 600) for s in subs))
        took = time.perf_counter() - began
        assert all(len(g) == size for g in got)
        return took
    finally:
        for t in (server, *clients):
            await t.close()


async def one_round(make: Callable[[str], MqttTransport], size: int) -> float:
    server = make("fl-server")
    clients = [make(f"client-{i:03d}") for i in range(CLIENTS)]
    try:
        updates = await server.subscribe("round-updates", group="bench-round")
        models = [await c.subscribe("round-model") for c in clients]
        for t in (server, *clients):
            await t.publish("warm-up", b"")
        began = time.perf_counter()
        await asyncio.gather(*(c.publish("round-updates", _payload(size, i), key=f"c{i}")
                               for i, c in enumerate(clients)))
        for _ in range(CLIENTS):
            await asyncio.wait_for(updates.__anext__(), 600)
        await server.publish("round-model", _payload(size, 99), retain=True)
        await asyncio.gather(*(asyncio.wait_for(m.__anext__(), 600) for m in models))
        took = time.perf_counter() - began
        await updates.close()
        return took
    finally:
        for t in (server, *clients):
            await t.close()


def maker(broker: Mosquitto, certs: DeploymentCerts, tls: bool) -> Callable[[str], MqttTransport]:
    def make(who: str) -> MqttTransport:
        if tls:
            return MqttTransport(port=broker.mtls_port, tls=certs.client_tls(who))
        return MqttTransport(port=broker.plain_port)

    return make


async def run(quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        certs = create_deployment_certs(
            Path(tmp) / "certs", [*(f"client-{i:03d}" for i in range(CLIENTS)), "fl-server"]
        )
        for limit_name, limit in (("1 MiB", MiB), ("none", 0)):
            broker = Mosquitto(Path(tmp) / f"broker-{limit}", certs, free_port(), free_port(),
                               free_port(), max_packet=limit)
            broker.start()
            try:
                for tls in (False, True):
                    make = maker(broker, certs, tls)
                    cases: list[tuple[str, int, Any]] = [("upload", 10 * MiB, upload)]
                    if not quick:
                        cases.append(("upload", 100 * MiB, upload))
                    cases += [("broadcast x10", 10 * MiB, broadcast),
                              ("round, 10 clients", 10 * MiB, one_round)]
                    for what, size, fn in cases:
                        times = [await fn(make, size) for _ in range(repeats)]
                        t = statistics.median(times)
                        moved = size * (2 * CLIENTS if fn is one_round
                                        else CLIENTS if fn is broadcast else 1)
                        rows.append({"limit": limit_name, "tls": "mTLS" if tls else "plain",
                                     "what": what, "MiB": size // MiB, "seconds": t,
                                     "MB/s": moved / t / 1e6})
                        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
            finally:
                broker.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = asyncio.run(run(args.quick))
    print("| broker max packet | link | case | payload | time (s) | MB/s moved |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['limit']} | {r['tls']} | {r['what']} | {r['MiB']} MiB | "
              f"{r['seconds']:.3f} | {r['MB/s']:.0f} |")


if __name__ == "__main__":
    main()
