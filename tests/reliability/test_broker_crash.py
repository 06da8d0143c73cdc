"""Mosquitto killed with SIGKILL mid-round, restarted on the same port and persistence directory:
with the broker settings foedus ships, the job finishes and no update is lost.

An outside attack run killed Mosquitto mid-round and lost that round's updates: the broker had
acknowledged them to the clients, but with the documented ``persistence true`` alone it writes
its persistence file only every ``autosave_interval`` (1800 s by default) and on a clean
shutdown. :data:`foedus.transport.mqtt.DURABLE_BROKER_SETTINGS` (``autosave_on_changes true``,
``autosave_interval 1``: the file is written after every change) keeps them, and the shipped
``deploy/mosquitto/mosquitto.conf`` carries those settings.

To kill the broker while updates are certainly queued in it (acknowledged to their senders, not
yet delivered to the server), the server reads one message at a time (``receive_window=1``) and a
gate in front of the server pod holds round 2's first update until the broker is back; the
updates behind it wait in the broker's queue for the server's durable session.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.certs import DeploymentCerts
from foedus.codec import decode, encode
from foedus.core.filter import Filter
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.server import ServerPod
from foedus.testing import wait_until
from foedus.topology.centralized import server_graph, topics
from foedus.transport.mqtt import DURABLE_BROKER_SETTINGS, MqttTransport
from tests.conftest import free_port
from tests.transport.mqtt_fixtures import Mosquitto
from tests.transport.mqtt_fixtures import _wait_listening as wait_listening

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = [f"client-{i:03d}" for i in range(5)]
ROUNDS = 3
HELD_ROUND = 2
INITIAL = {"w": np.zeros(8, np.float32)}
SECRET = "broker-crash-test-session-secret"


@pytest.fixture
def durable_mosquitto(tmp_path: Path, mqtt_certs: DeploymentCerts) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path, mqtt_certs, free_port(), free_port(), free_port(),
                       durable=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Gate(Filter):
    """Passes updates on, except that it holds the first one of :data:`HELD_ROUND` (and, with
    the runtime's one-message inboxes, everything the link reads after it) until released."""

    blocking = True  # process() waits in a worker thread, the event loop runs on

    def __init__(self) -> None:
        super().__init__("gate")
        self.holding = threading.Event()
        self.released = threading.Event()

    def process(self, msg: Message) -> Message:
        if msg.round == HELD_ROUND and not self.released.is_set():
            self.holding.set()
            self.released.wait(60)
        return msg


async def client(port: int, job: str, name: str, ready: asyncio.Event,
                 published: Counter[int]) -> None:
    """Answers every model with an update of ones; counts the answers the broker acknowledged."""
    transport = MqttTransport(port=port)
    try:
        sub = await transport.subscribe(topics(job).model)
        ready.set()
        async for payload in sub:
            model = decode(payload)
            if model.kind is Kind.CONTROL:
                return
            update = model.reply(Kind.UPDATE, name, num_examples=1,
                                 params={k: np.ones_like(v) for k, v in model.params.items()})
            await transport.publish(topics(job).updates, encode(update), key=name)
            published[model.round] += 1
    finally:
        await transport.close()


async def persisted(broker: Mosquitto, job: str) -> None:
    """Return once the broker's persistence file holds everything it acknowledged so far.

    Mosquitto acknowledges a message, then writes its file at the end of that turn of its loop:
    a SIGKILL in between loses what arrived in that instant (on a loaded machine the instant can
    be long). Two retained messages, each sent once the previous was acknowledged, close it:
    the second is read only after the turn that handled the first, which wrote the file."""
    marker = MqttTransport(port=broker.plain_port)
    try:
        for i in range(2):
            await marker.publish(f"{job}.marker", b"%d" % i, retain=True)
    finally:
        await marker.close()


async def test_a_broker_killed_mid_round_loses_no_update(durable_mosquitto: Mosquitto) -> None:
    broker = durable_mosquitto
    job = f"crash-{uuid.uuid4().hex[:8]}"
    server = ServerPod(job_id=job, initial_params=INITIAL, aggregator=FedAvg(), rounds=ROUNDS,
                       expected_clients=len(CLIENTS), min_clients=len(CLIENTS),
                       round_timeout=20, participants=CLIENTS)
    transport = MqttTransport(port=broker.plain_port, receive_window=1, session_secret=SECRET)
    gate = Gate()
    graph = server_graph(server, transport, filters=[gate])
    published: Counter[int] = Counter()
    ready = [asyncio.Event() for _ in CLIENTS]
    tasks = [asyncio.create_task(client(broker.plain_port, job, name, r, published))
             for name, r in zip(CLIENTS, ready, strict=True)]
    try:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
        async with Runtime(graph, queue_size=1) as runtime:
            # round 2: every update acknowledged by the broker, the first one held at the gate
            await wait_until(lambda: gate.holding.is_set()
                             and published[HELD_ROUND] == len(CLIENTS), timeout=30)
            await persisted(broker, job)
            broker.kill()  # SIGKILL: nothing is written on the way out
            broker.start()  # same ports, same persistence directory
            gate.released.set()
            await asyncio.wait_for(runtime.wait(), 90)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        gate.released.set()
        for task in tasks:
            task.cancel()
        await transport.close()

    assert [(r.round, r.status, r.accepted) for r in server.history] == [
        (r, "ok", len(CLIENTS)) for r in range(1, ROUNDS + 1)]  # none lost
    np.testing.assert_array_equal(server.params["w"], np.ones(8, np.float32))


def test_the_shipped_broker_config_carries_the_durable_settings_and_starts(
    tmp_path: Path, mqtt_certs: DeploymentCerts,
) -> None:
    """``deploy/mosquitto/mosquitto.conf`` holds every durable setting, and mosquitto starts
    with it (its paths pointed at this test's certificates, directory and port)."""
    shipped = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    lines = {line.strip() for line in shipped.splitlines()}
    assert set(DURABLE_BROKER_SETTINGS) <= lines
    port = free_port()
    c = mqtt_certs
    local = (shipped.replace("listener 8883", f"listener {port} 127.0.0.1")
             .replace("pki/ca.pem", str(c.ca)).replace("pki/server.pem", str(c.server_cert))
             .replace("pki/server.key", str(c.server_key))
             .replace("/var/lib/mosquitto/", f"{tmp_path}/data/")
             .replace("acl_file deploy/", f"acl_file {ROOT}/deploy/"))
    (tmp_path / "data").mkdir()
    conf = tmp_path / "mosquitto.conf"
    log = tmp_path / "mosquitto.log"
    conf.write_text(local + f"user root\nlog_dest file {log}\n")
    log.touch()
    proc = subprocess.Popen([Mosquitto.binary(), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log)  # raises with the broker's log if it refused the file
    finally:
        proc.kill()
        proc.wait()
