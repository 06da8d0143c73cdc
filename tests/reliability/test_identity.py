"""Identity: no client can submit an update under another client's name, and nobody unknown
gets an update in, on three transports with three mechanisms.

* MQTT with mutual TLS and ``verify_sender`` (the broker's ACL binds topics to certificate names).
* gRPC with the hub's ``require_sender_identity`` hook (the hub compares sender and certificate).
* Kafka *without* TLS identities, where the ``sign`` stage's Ed25519 signatures do the job.

In each, a live server runs a round with two honest clients while an attacker who is a legitimate
participant (``client-002``) tries to pass an update off as ``client-000``'s, and an outsider
tries to take part. The round must fold in exactly the honest updates, and client-000's own
update must still be accepted: a forgery must not even use up the victim's one answer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.certs import DeploymentCerts
from foedus.codec import decode, encode
from foedus.core.errors import TransportError
from foedus.core.filter import Filter
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.server import ServerPod
from foedus.security.signing import SignFilter, VerifyFilter, create_signing_keys, load_private_key
from foedus.topology.centralized import server_graph, topics
from foedus.transport.base import Transport
from foedus.transport.tls import TLSConfig
from tests.transport.mqtt_fixtures import Mosquitto

pytestmark = pytest.mark.integration

HONEST = {"client-000": 1.0, "client-001": 3.0}
Attack = Callable[[Message], Awaitable[None]]


def forged(model: Message, claimed: str, value: float = 100.0) -> Message:
    """An update claiming to come from ``claimed``, with a value that would move the mean."""
    return model.reply(Kind.UPDATE, claimed, num_examples=1,
                       params={k: np.full_like(v, value) for k, v in model.params.items()})


async def run_round(
    job: str, server_transport: Transport, clients: dict[str, Transport], attack: Attack,
    *, server_filters: list[Filter] | None = None,
    client_filter: Callable[[Message], Message] = lambda m: m,
) -> ServerPod:
    """One round: the attacker strikes first, then the honest clients answer."""
    server = ServerPod(job_id=job, initial_params={"w": np.zeros(4)}, aggregator=FedAvg(),
                       rounds=1, expected_clients=2, min_clients=2, round_timeout=10)
    t = topics(job)
    subs = {name: await tr.subscribe(t.model) for name, tr in clients.items()}
    attacked = asyncio.Event()

    async def client(name: str) -> None:
        model = decode(await anext(aiter(subs[name])))
        if name == "attacker":
            await attack(model)  # its publishes are acknowledged by the broker or hub
            attacked.set()
            return
        await attacked.wait()  # the attacker goes first: a forgery must not take our slot
        update = client_filter(forged(model, name, HONEST[name]))
        await clients[name].publish(t.updates, encode(update), key=name)

    tasks = [asyncio.create_task(client(name)) for name in clients]
    graph = server_graph(server, server_transport, filters=server_filters or [])
    async with Runtime(graph) as runtime:
        await asyncio.wait_for(runtime.wait(), 60)
    await asyncio.gather(*tasks)
    return server


def honest_mean_only(server: ServerPod) -> None:
    [record] = server.history
    assert record.accepted == 2 and record.status == "ok"
    np.testing.assert_allclose(server.params["w"], 2.0)  # (1 + 3) / 2: no forged value in it


# ---- MQTT: mutual TLS and verify_sender -----------------------------------------------------


async def test_mqtt_mutual_tls_refuses_a_participant_impersonating_another_and_strangers(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts, tmp_path: Path,
) -> None:
    from foedus.certs import create_deployment_certs
    from foedus.transport.mqtt import MqttTransport

    def participant(name: str) -> MqttTransport:
        return MqttTransport(port=mosquitto.mtls_port, tls=mqtt_certs.client_tls(name),
                             verify_sender=True, sender_aliases={"fl-server": "server"})

    stranger_certs = create_deployment_certs(tmp_path / "other-ca", ("client-000",))
    server_t = participant("fl-server")
    clients: dict[str, Transport] = {n: participant(n) for n in HONEST}
    clients["attacker"] = participant("client-002")
    refused: list[str] = []

    async def attack(model: Message) -> None:
        await clients["attacker"].publish(topics(model.header.job_id).updates,
                                          encode(forged(model, "client-000")))
        for tls in (TLSConfig(mqtt_certs.ca),  # no client certificate at all
                    stranger_certs.client_tls("client-000")):  # a certificate from another CA
            outsider = MqttTransport(port=mosquitto.mtls_port, tls=tls, connect_timeout=3)
            try:
                await outsider.publish(topics(model.header.job_id).updates,
                                       encode(forged(model, "client-000")))
            except TransportError as exc:
                refused.append(str(exc))
            finally:
                await outsider.close()

    try:
        server = await run_round(f"id-mqtt-{uuid.uuid4().hex[:6]}", server_t, clients, attack)
    finally:
        for tr in (server_t, *clients.values()):
            await tr.close()
    honest_mean_only(server)
    assert len(refused) == 2  # neither outsider got a connection
    assert server.history[0].rejected == {}  # the transport dropped the forgery (counted: below)


async def test_mqtt_impersonation_is_counted_by_the_servers_transport(
    mosquitto: Mosquitto, mqtt_certs: DeploymentCerts,
) -> None:
    from foedus.transport.mqtt import MqttTransport

    def participant(name: str) -> MqttTransport:
        return MqttTransport(port=mosquitto.mtls_port, tls=mqtt_certs.client_tls(name),
                             verify_sender=True, sender_aliases={"fl-server": "server"})

    server_t = participant("fl-server")
    attacker = participant("client-002")
    try:
        t = f"id-count-{uuid.uuid4().hex[:6]}"
        sub = await server_t.subscribe(t)
        await attacker.publish(t, encode(Message.create(
            Kind.UPDATE, job_id="j", round=1, sender="client-000")))
        own = encode(Message.create(Kind.UPDATE, job_id="j", round=1, sender="client-002"))
        await attacker.publish(t, own)
        assert await asyncio.wait_for(anext(aiter(sub)), 10) == own
        assert sub.rejected == {"impersonation": 1}  # type: ignore[attr-defined]
    finally:
        await attacker.close()
        await server_t.close()


# ---- gRPC: the hub's sender-identity hook ---------------------------------------------------


async def test_grpc_hub_refuses_an_update_under_another_identity_and_strangers(
    mqtt_certs: DeploymentCerts, tmp_path: Path,
) -> None:
    from foedus.certs import create_deployment_certs
    from foedus.transport.grpc import GrpcHub, GrpcTransport
    from foedus.transport.hub import require_sender_identity

    certs = mqtt_certs  # CA, server certificate and client-000..002, fl-server
    stranger_certs = create_deployment_certs(tmp_path / "other-ca", ("client-000",))
    async with GrpcHub("127.0.0.1", 0, certs.server_tls(),
                       authorize=require_sender_identity({"fl-server": "server"})) as hub:
        def participant(name: str) -> GrpcTransport:
            return GrpcTransport(hub.address, tls=certs.client_tls(name), connect_timeout=3.0)

        server_t = participant("fl-server")
        clients: dict[str, Transport] = {n: participant(n) for n in HONEST}
        clients["attacker"] = participant("client-002")
        refused: list[str] = []

        async def attack(model: Message) -> None:
            t = topics(model.header.job_id).updates
            try:
                await clients["attacker"].publish(t, encode(forged(model, "client-000")))
            except TransportError as exc:
                refused.append(f"impersonation: {exc}")
            outsider = GrpcTransport(hub.address, tls=stranger_certs.client_tls("client-000"),
                                     connect_timeout=3.0)
            try:
                await outsider.publish(t, encode(forged(model, "client-000")))
            except TransportError as exc:
                refused.append(f"stranger: {exc}")
            finally:
                await outsider.close()

        try:
            server = await run_round(f"id-grpc-{uuid.uuid4().hex[:6]}", server_t, clients,
                                     attack)
        finally:
            for tr in (server_t, *clients.values()):
                await tr.close()
        honest_mean_only(server)
        assert [r.split(":")[0] for r in refused] == ["impersonation", "stranger"]
        assert "client-000" in refused[0]
        assert hub.hub.stats["refused_unauthorized"] == 1  # the stranger never got a connection


# ---- Kafka without TLS identities: Ed25519-signed messages ----------------------------------


async def test_signed_messages_over_kafka_refuse_forgeries_unknown_signers_and_tampering(
    tmp_path: Path,
) -> None:
    from foedus.transport.kafka import KafkaTransport
    from tests.transport.kafka_fixtures import Tansu

    broker = Tansu(tmp_path / "tansu")
    broker.start()
    try:
        keys = create_signing_keys(tmp_path / "keys", [*HONEST, "client-002"])
        outsider_keys = create_signing_keys(tmp_path / "outsider", ["mallory", "client-000"])
        registry = VerifyFilter({n: load_private_key(p).public_key() for n, p in keys.items()})

        def transport() -> KafkaTransport:
            return KafkaTransport(broker.bootstrap)

        sign = SignFilter(str(tmp_path / "keys" / "{sender}.key"))
        clients: dict[str, Transport] = {n: transport() for n in HONEST}
        clients["attacker"] = transport()
        server_t = transport()

        async def attack(model: Message) -> None:
            t = topics(model.header.job_id).updates
            insider = SignFilter(keys["client-002"])  # a real participant's own key
            outsider = SignFilter(outsider_keys["mallory"])
            stolen_name = SignFilter(outsider_keys["client-000"])  # a key nobody registered
            tampered = sign(forged(model, "client-001", 3.0))
            assert tampered is not None
            tampered = tampered.replace(params={"w": np.full(4, 100.0)})
            for msg in (
                forged(model, "client-000"),  # unsigned
                insider(forged(model, "client-000")),  # signed by client-002 as client-000
                outsider(forged(model, "mallory")),  # an unknown party
                stolen_name(forged(model, "client-000")),  # unknown key, known name
                tampered,  # a signed update changed afterwards
            ):
                assert msg is not None
                await clients["attacker"].publish(t, encode(msg), key="attacker")

        def signed(msg: Message) -> Message:
            out = sign(msg)
            assert out is not None
            return out

        try:
            server = await run_round(f"id-kafka-{uuid.uuid4().hex[:6]}", server_t, clients,
                                     attack, server_filters=[registry], client_filter=signed)
        finally:
            for tr in (server_t, *clients.values()):
                await tr.close()
    finally:
        broker.stop()
    honest_mean_only(server)
    assert registry.rejected == {"unsigned": 1, "bad_signature": 3, "unknown_signer": 1}
    assert registry.verified == 2
