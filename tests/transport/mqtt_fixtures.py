"""A real mosquitto broker for the MQTT tests: plain, TLS and mutual-TLS listeners on free ports.

The broker gets a generated config (``user root`` so it can read the test certificates,
persistence in a temporary directory, and a deliberately SMALL ``max_packet_size`` so that every
payload above 1 MiB is chunked by the transport), and is killed afterwards even when a test fails.
Certificates come from :mod:`foedus.certs`, the same code ``foedus certs`` runs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foedus.certs import DeploymentCerts, create_deployment_certs
from foedus.transport.mqtt import DURABLE_BROKER_SETTINGS
from tests.conftest import free_port

#: the broker's maximum packet size: small, so the contract's multi-MiB payloads are chunked
BROKER_MAX_PACKET = 1024 * 1024
PARTICIPANTS = ("client-000", "client-001", "client-002", "fl-server")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"mosquitto did not listen on {port}:\n{log.read_text()}")


@dataclass
class Mosquitto:
    """One broker process with three listeners; ``restart()`` keeps ports and persistence."""

    workdir: Path
    certs: DeploymentCerts
    plain_port: int
    tls_port: int
    mtls_port: int
    max_packet: int = BROKER_MAX_PACKET
    proc: subprocess.Popen[bytes] | None = None
    #: write the persistence file after every change (the shipped settings that survive a
    #: SIGKILL); off for the shared broker, whose tests move 100 MiB payloads
    durable: bool = False

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def config(self) -> str:
        c = self.certs
        tls = f"cafile {c.ca}\ncertfile {c.server_cert}\nkeyfile {c.server_key}\n"
        return (
            "user root\n"
            "per_listener_settings true\n"
            "persistence true\n"
            + ("".join(f"{line}\n" for line in DURABLE_BROKER_SETTINGS) if self.durable else "")
            + f"persistence_location {self.workdir}/data/\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + (f"max_packet_size {self.max_packet}\n" if self.max_packet else "")
            + "max_inflight_messages 20\n"
            "max_queued_messages 100000\n"
            f"listener {self.plain_port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous true\n{tls}"
            f"listener {self.mtls_port} 127.0.0.1\nallow_anonymous false\n{tls}"
            "require_certificate true\nuse_identity_as_username true\n"
            f"acl_file {self.acl()}\n"
        )

    def acl(self) -> Path:
        """On the mutual-TLS listener a client may publish under its own certificate name only
        (``from/%u``), which is what ``verify_sender`` relies on; plain topics stay writable."""
        path = self.workdir / "acl"
        path.write_text(
            "pattern read foedus/#\n"
            "pattern write foedus/d/+\n"
            "pattern write foedus/r/+/+\n"
            "pattern write foedus/d/+/from/%u\n"
            "pattern write foedus/r/+/from/%u/+\n"
        )
        return path

    def start(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen(
            [self.binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        for port in (self.plain_port, self.tls_port, self.mtls_port):
            _wait_listening(port, self.proc, self.log)

    def stop(self) -> None:
        """SIGTERM (mosquitto writes its persistence file), then kill if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL: the broker writes nothing on its way out (a crash, a power loss);
        :meth:`start` brings it back on the same ports and persistence directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @staticmethod
    def binary() -> str:
        found = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if found is None:
            pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
        return found


@pytest.fixture(scope="session")
def mqtt_certs(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCerts:
    return create_deployment_certs(tmp_path_factory.mktemp("mqtt-certs"), PARTICIPANTS)


def _broker(tmp: Path, certs: DeploymentCerts) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp, certs, free_port(), free_port(), free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mosquitto(
    tmp_path_factory: pytest.TempPathFactory, mqtt_certs: DeploymentCerts
) -> Iterator[Mosquitto]:
    """One broker shared by the whole session (tests use unique topics)."""
    yield from _broker(tmp_path_factory.mktemp("mosquitto"), mqtt_certs)


@pytest.fixture
def own_mosquitto(tmp_path: Path, mqtt_certs: DeploymentCerts) -> Iterator[Mosquitto]:
    """A broker for one test, which may restart it."""
    yield from _broker(tmp_path, mqtt_certs)
