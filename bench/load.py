"""Load held: how many connected clients one server process serves with its rounds on time.

For each transport (MQTT, Kafka, gRPC, HTTPS) and each client count N of ``--steps``, one job
runs: a :class:`~foedus.roles.server.ServerPod` in its own OS process (for gRPC and HTTPS the
hub lives in that process too and the server pod uses it without a connection, as with
``serve_as: server``), and N *lightweight* clients,
``--per-process`` of them per OS process on asyncio (100: paho-mqtt runs a thread per client
around ``select()``, which cannot watch descriptors above 1024; so MQTT steps beyond about
1,000 clients mostly measure thousands of client threads on the machine's cores, not the
server), each with its own connection
(transport object) and a real client graph (downlink, :class:`~foedus.roles.client.ClientPod`,
uplink) around a model that does not train (10 parameters): what is measured is the server,
the transport and the broker, not learning. The server waits until every client process has
subscribed, then runs one warm-up round and ``--rounds`` judged rounds with
``round_timeout = --deadline`` and a quorum of all N (the warm-up round absorbs the last
connections' first subscription round trips). A step *holds* when every judged round accepted
all N updates within the deadline; a transport stops at its first step that does not hold (or
whose clients take longer than ``--budget`` to connect).

Brokers (Mosquitto, Tansu) are started on loopback and stopped afterwards; connections are
plaintext on loopback (TLS adds a handshake per client at connect time, not per round). The
hubs run with per-peer limits raised: on one machine every client shares the address
127.0.0.1, which the default limits (256 subscriptions per peer) would rightly refuse.

Run (writes its table into docs/benchmarks-reliability.md, between the ``load.py`` markers)::

    .venv/bin/python bench/load.py                        # every transport, 100..1000 clients
    .venv/bin/python bench/load.py --only mqtt --steps 200,2000 --out -
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foedus.transport.base import Subscription, Transport

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("mqtt", "kafka", "grpc", "https")
BEGIN, END = "<!-- load.py: begin -->", "<!-- load.py: end -->"


# ---- the actors (run inside the child processes) ----------------------------------------------
def tiny_model() -> Any:
    """A model adapter that does not train: the update is its 10 parameters, at once."""
    from foedus.core.params import Params
    from foedus.data.datasets import Dataset
    from foedus.models.base import ModelAdapter

    class Still(ModelAdapter):
        name: ClassVar[str] = "still"

        def __init__(self) -> None:
            self.params = {"w": np.zeros(10)}

        def get_params(self) -> dict[str, np.ndarray]:
            return dict(self.params)

        def set_params(self, params: Params) -> None:
            self.params = {k: np.asarray(v) + 1.0 for k, v in params.items()}

        def fit(self, data: Dataset, epochs: int = 1) -> dict[str, float]:
            return {}

        def evaluate(self, data: Dataset) -> dict[str, float]:
            return {}

    return Still()


def transport_for(kind: str, endpoint: str) -> Any:
    """One client's (or the server's) own connection."""
    if kind == "mqtt":
        from foedus.transport.mqtt import MqttTransport

        host, port = endpoint.rsplit(":", 1)
        return MqttTransport(host, int(port), session_secret="load-bench-session-secret")
    if kind == "kafka":
        from foedus.transport.kafka import KafkaTransport

        return KafkaTransport(endpoint)
    if kind == "grpc":
        from foedus.transport.grpc import GrpcTransport

        return GrpcTransport(endpoint, insecure=True, connect_timeout=60)
    from foedus.transport.https import HttpsTransport

    return HttpsTransport(f"http://{endpoint}", insecure=True, poll_s=20.0, connect_timeout=60)


def client_ids(n: int) -> list[str]:
    return [f"client-{i:05d}" for i in range(n)]


class InProcess(Transport):
    """The server's own side of a hub it hosts, without a connection: what ``serve_as:
    server`` gives the server actor in a deployment (:class:`~foedus.transport.hub.HubClient`
    in-process mode), here around a hub started with bench limits."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    async def publish(self, topic: str, payload: bytes, *, key: str | None = None,
                      retain: bool = False) -> None:
        from foedus.transport.hub import Publication

        self.hub.publish(Publication(topic, bytes(payload), key, retain, "server"))

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        from foedus.transport.hub import HubSubscription

        return HubSubscription(self.hub.open(topic, group))

    async def close(self) -> None:
        pass


async def server_role(kind: str, endpoint: str, job: str, n: int, rounds: int,
                      deadline: float) -> None:
    """The server process: host the hub (gRPC, HTTPS), subscribe, wait for 'go', run rounds,
    print the round records as one JSON line."""
    from foedus.aggregate.fedavg import FedAvg
    from foedus.core.runtime import Runtime
    from foedus.roles.server import ServerPod
    from foedus.topology.centralized import server_graph
    from foedus.transport.hub.limits import PeerLimits

    hub: Any = None
    host, port = endpoint.rsplit(":", 1)
    wide = PeerLimits(max_connections=10**6, max_subscriptions=10**6, max_publishes=10**6,
                      max_topics=10**6)
    if kind == "grpc":
        from foedus.transport.grpc import GrpcHub

        hub = await GrpcHub(host, int(port), insecure=True, limits=wide).start()
    elif kind == "https":
        from foedus.transport.https import HttpsHub

        hub = await HttpsHub(host, int(port), insecure=True, limits=wide).start()
    server = ServerPod(job_id=job, initial_params={"w": np.zeros(10)}, aggregator=FedAvg(),
                       rounds=rounds, expected_clients=n, min_clients=n,
                       participants=client_ids(n), round_timeout=deadline)
    transport = transport_for(kind, endpoint) if hub is None else InProcess(hub.hub)
    runtime = Runtime(server_graph(server, transport), queue_size=1024)
    print("listening", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    began = time.perf_counter()
    await runtime.start()
    await runtime.wait()
    await runtime.stop()
    await transport.close()
    if hub is not None:
        await hub.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "rounds": [{"accepted": r.accepted, "status": r.status, "duration_s": r.duration_s}
                   for r in server.history],
        "wall_s": time.perf_counter() - began, "server_rss_mib": rss,
    }), flush=True)


async def clients_role(kind: str, endpoint: str, job: str, first: int, count: int,
                       total: int) -> None:
    """A client process: ``count`` clients, each on its own connection; 'ready' once all of
    them are subscribed; ends when every one has its run's stop."""
    from foedus.core.runtime import Runtime
    from foedus.data.datasets import Dataset
    from foedus.roles.client import ClientPod
    from foedus.topology.centralized import client_graph

    data = Dataset(np.zeros((1, 1)), np.zeros(1))
    ids = client_ids(total)[first:first + count]
    pods = [ClientPod(client_id=c, model=tiny_model(), data=data) for c in ids]
    transports = [transport_for(kind, endpoint) for _ in ids]
    runtimes = [Runtime(client_graph(p, t, job), queue_size=4)
                for p, t in zip(pods, transports, strict=True)]
    for chunk in range(0, len(runtimes), 50):  # connect in waves, not all at one instant
        await asyncio.gather(*(rt.start() for rt in runtimes[chunk:chunk + 50]))
    print("ready", flush=True)
    await asyncio.gather(*(p.finished.wait() for p in pods))
    for rt in runtimes:
        await rt.stop()
    await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)


# ---- the orchestrator -------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """The broker a transport needs (none for the hubs), on loopback."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.work = kind, work
        self.handle: Any = None
        self.endpoint = f"127.0.0.1:{free_port()}"

    def __enter__(self) -> Broker:
        sys.path.insert(0, str(ROOT))
        if self.kind == "mqtt":
            from tests.transport.mqtt_fixtures import Mosquitto

            from foedus.certs import create_deployment_certs

            certs = create_deployment_certs(self.work / "certs", ["client"])
            broker = Mosquitto(self.work / "mosquitto", certs, free_port(), free_port(),
                               free_port(), max_packet=0)
            (self.work / "mosquitto").mkdir(parents=True, exist_ok=True)
            broker.start()
            self.handle, self.endpoint = broker, f"127.0.0.1:{broker.plain_port}"
        elif self.kind == "kafka":
            from tests.transport.kafka_fixtures import Tansu

            tansu = Tansu(self.work / "tansu")
            tansu.start()
            self.handle, self.endpoint = tansu, tansu.bootstrap
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.stop()


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)


def expect(proc: subprocess.Popen[str], word: str, timeout: float) -> None:
    """Wait for a child's line ``word`` (it reads it from a pipe: no guessing with sleeps)."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not sel.select(max(0.0, end - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == word:
            return
    raise TimeoutError(f"no {word!r} from a child process within {timeout:.0f}s")


def one_step(kind: str, endpoint: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    job = f"load-{kind}-{n}-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    began = time.perf_counter()
    server = spawn("--role", "server", "--kind", kind, "--endpoint", endpoint, "--job", job,
                   "--count", str(n), "--rounds", str(args.rounds + 1),
                   "--deadline", str(args.deadline))
    children: list[subprocess.Popen[str]] = []
    row: dict[str, Any] = {"transport": kind, "clients": n,
                           "processes": math.ceil(n / args.per_process)}
    try:
        expect(server, "listening", 60)
        for first in range(0, n, args.per_process):
            children.append(spawn("--role", "clients", "--kind", kind, "--endpoint", endpoint,
                                  "--job", job, "--first", str(first),
                                  "--count", str(min(args.per_process, n - first)),
                                  "--total", str(n)))
        connect_by = time.monotonic() + args.budget  # one budget for all of them
        for child in children:
            expect(child, "ready", max(1.0, connect_by - time.monotonic()))
        row["connect_s"] = time.perf_counter() - began
        assert server.stdin is not None
        server.stdin.write("go\n")
        server.stdin.flush()
        out, _ = server.communicate(timeout=(args.rounds + 1) * args.deadline + 60)
        result = json.loads(out.strip().splitlines()[-1])
        warmup, rounds = result["rounds"][:1], result["rounds"][1:]
        row.update(
            rounds=len(rounds), server_rss_mib=round(result["server_rss_mib"]),
            warmup=[(r["accepted"], round(r["duration_s"], 2)) for r in warmup],
            accepted=[r["accepted"] for r in rounds],
            round_s=[round(r["duration_s"], 2) for r in rounds],
            held=len(rounds) == args.rounds and all(
                r["accepted"] == n and r["status"] == "ok" and r["duration_s"] < args.deadline
                for r in rounds),
        )
    except TimeoutError as exc:
        row.update(held=False, error=f"clients not connected in time: {exc}"[:120])
    except subprocess.TimeoutExpired:
        row.update(held=False, error="the server's rounds did not end in time")
    except (ValueError, IndexError, AssertionError) as exc:
        row.update(held=False, error=f"{type(exc).__name__}: {exc}"[:120])
    finally:
        for proc in (server, *children):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    row["step_s"] = round(time.perf_counter() - began, 1)
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace, load: str) -> str:
    lines = [
        BEGIN, "", "## Load held (`bench/load.py`)", "",
        f"`{' '.join(['python', 'bench/load.py', *sys.argv[1:]])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {load} at start (the machine "
        "was shared with other jobs). One server process; lightweight clients "
        f"({args.per_process} per process, asyncio, one connection each, plaintext on "
        "loopback, a 10-parameter model that does not train); a warm-up round, then "
        f"{args.rounds} rounds with a deadline of {args.deadline:g} s each and every client "
        "in the quorum. A step *holds* when each of those rounds accepted every client's "
        "update within the deadline; a transport's last row is the step that did not.", "",
        "| transport | clients | client processes | held | accepted per round | "
        "round seconds | connect s | server peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['transport']} | {r['clients']:,} | {r['processes']} | "
            f"{'yes' if r['held'] else 'no'} | {r.get('accepted', '-')} | "
            f"{r.get('round_s', r.get('error', '-'))} | "
            f"{format(r['connect_s'], '.1f') if 'connect_s' in r else '-'} "
            f"| {r.get('server_rss_mib', '-')} |")
    best: dict[str, int] = {}
    for r in rows:
        if r["held"]:
            best[r["transport"]] = max(best.get(r["transport"], 0), r["clients"])
    lines += ["", "Most clients held: " + ", ".join(
        f"{k} {best.get(k, 0):,}" for k in dict.fromkeys(r["transport"] for r in rows)) + ".",
        "", END]
    return "\n".join(lines)


def write(out: str, text: str) -> None:
    if out == "-":
        print(text)
        return
    path = Path(out)
    current = path.read_text() if path.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(current)


def steps_of(text: str, kinds: list[str]) -> dict[str, list[int]]:
    """``--steps``: one list for every transport, or ``kind=list`` pairs separated by ';'."""
    if "=" not in text:
        return {k: [int(n) for n in text.split(",")] for k in kinds}
    given = dict(part.split("=", 1) for part in text.split(";") if part.strip())
    missing = sorted(set(kinds) - set(given))
    if missing:
        raise SystemExit(f"--steps: no client counts for {', '.join(missing)}")
    return {k: [int(n) for n in given[k].split(",")] for k in kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "server", "clients"), default="bench")
    parser.add_argument("--only", default=",".join(KINDS))
    parser.add_argument("--steps", default="100,300,1000",
                        help="client counts: '100,300' for every transport, or per transport "
                             "'mqtt=100,1000;grpc=100,300'")
    parser.add_argument("--per-process", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=20.0)
    parser.add_argument("--budget", type=float, default=90.0,
                        help="seconds a step's clients may take to connect")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-reliability.md"))
    # child processes
    parser.add_argument("--kind"), parser.add_argument("--endpoint"), parser.add_argument("--job")
    parser.add_argument("--count", type=int), parser.add_argument("--first", type=int)
    parser.add_argument("--total", type=int)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(server_role(args.kind, args.endpoint, args.job, args.count, args.rounds,
                                args.deadline))
        return
    if args.role == "clients":
        asyncio.run(clients_role(args.kind, args.endpoint, args.job, args.first, args.count,
                                 args.total))
        return
    # a SIGTERM unwinds like an exception: children killed, brokers stopped (no orphans)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows: list[dict[str, Any]] = []
    steps = steps_of(args.steps, args.only.split(","))
    for kind in args.only.split(","):
        with tempfile.TemporaryDirectory() as tmp, Broker(kind, Path(tmp)) as broker:
            for n in steps[kind]:
                endpoint = broker.endpoint if kind in ("mqtt", "kafka") else \
                    f"127.0.0.1:{free_port()}"
                row = one_step(kind, endpoint, n, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
                if not row["held"]:
                    break
    write(args.out, table(rows, args, load))


if __name__ == "__main__":
    main()
