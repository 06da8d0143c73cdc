"""What the server broadcasts is authenticated: with ``sign`` the server signs every model and
control message, clients obey only what its key signed, and a stranger's forged ``stop`` or
model on the model topic is refused, counted and logged; the job runs all its rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from foedus.codec import decode, encode
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.security.signing import (
    SIGNATURE_META,
    BroadcastVerifier,
    SignFilter,
    SignStage,
    create_signing_keys,
    load_broadcast_public_key,
)
from foedus.transport.local import LocalTransport
from tests.security.broadcast_kit import (
    forged_model,
    forged_stop,
    make_job,
    model_topic,
    run_job_graphs,
    signing,
    until,
)


def model(**meta: object) -> Message:
    return Message.create(Kind.MODEL, job_id="j", round=2, sender="server",
                          params={"w": np.arange(4.0)}, meta={"run": "r1", **meta})


def test_a_signed_broadcast_verifies_after_the_wire_and_any_change_is_refused(
    tmp_path: Path,
) -> None:
    stage = signing(tmp_path)
    signed = stage.broadcast_signer()(model())
    verifier = stage.broadcast_verifier()
    verifier.check(decode(encode(signed)))
    for changed, reason in [
        (signed.replace(meta={**signed.meta, "run": "r2"}), "bad_signature"),
        (signed.replace(params={"w": np.zeros(4)}), "bad_signature"),
        (signed.replace(round=3), "bad_signature"),
        (model(), "unsigned"),
    ]:
        with pytest.raises(RejectedUpdate) as info:
            verifier.check(changed)
        assert info.value.reason == reason
    assert verifier.rejected == {"bad_signature": 3, "unsigned": 1} and verifier.verified == 1


def test_a_clients_update_signature_never_passes_as_the_servers_broadcast(tmp_path: Path) -> None:
    """Even a key registered for both: the domains differ, so a client cannot mint a stop."""
    create_signing_keys(tmp_path, ["server"])
    stop = Message.create(Kind.CONTROL, job_id="j", round=0, sender="server",
                          meta={"action": "stop"})
    as_update = SignFilter(str(tmp_path / "server.key"))(stop)
    assert as_update is not None
    verifier = BroadcastVerifier(load_broadcast_public_key(tmp_path / "public" / "server.pub"))
    with pytest.raises(RejectedUpdate, match="not signed by the server"):
        verifier.check(as_update.replace(trail=()))


def test_the_server_can_sign_with_its_foedus_certs_key_and_clients_check_its_certificate(
    tmp_path: Path,
) -> None:
    from foedus.certs import create_deployment_certs

    certs = create_deployment_certs(tmp_path, ["client-000"])
    stage = SignStage(private_key=str(tmp_path / "{sender}.key"),
                      server_key=str(certs.server_key), server_public_key=str(certs.server_cert))
    signed = stage.broadcast_signer()(model())
    assert isinstance(signed.meta[SIGNATURE_META], bytes)
    stage.broadcast_verifier().check(decode(encode(signed)))


def test_missing_broadcast_keys_are_one_line_config_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sign\.server_public_key is needed"):
        SignStage(private_key="k/{sender}.key").broadcast_verifier()
    with pytest.raises(ConfigError, match=r"sign\.server_key is needed"):
        SignStage(public_keys=str(tmp_path)).broadcast_signer()
    with pytest.raises(ConfigError, match="cannot read the server's signing key"):
        SignStage(private_key=str(tmp_path / "{sender}.key")).broadcast_signer()
    with pytest.raises(ConfigError, match=r"sign\.server_public_key: expected a path"):
        SignStage(private_key="k", server_public_key="")


async def attack_during_job(transports: list, outsider, *, sign: SignStage | None,  # type: ignore[no-untyped-def,type-arg]
                            round_timeout: float = 30.0) -> object:
    """Between rounds 1 and 2 an outsider publishes a forged ``stop`` (copying the run id it
    read on the topic) and a forged model on the model topic, then the job goes on."""
    job = make_job(rounds=3, sign=sign, round_timeout=round_timeout)

    async def attack(rnd: int) -> None:
        if rnd != 2:
            return
        run = job.server.run_id  # readable by anyone who can read the model topic
        await outsider.publish(model_topic(job.job_id), forged_stop(job.job_id, run))
        await outsider.publish(model_topic(job.job_id), forged_model(
            job.job_id, 2, job.server.params, run))
        await until(lambda: all(sum(c.refused.values()) >= 2 or c.finished.is_set()
                                for c in job.clients), what="every client saw the forgeries")

    job.server.before_round = attack
    await run_job_graphs(job, transports[0], transports[1:])
    return job


async def test_with_sign_a_forged_stop_and_model_are_refused_and_all_rounds_run(
    tmp_path: Path,
) -> None:
    transport = LocalTransport()
    job = await attack_during_job([transport] * 4, transport, sign=signing(tmp_path))
    assert [r.accepted for r in job.server.history] == [3, 3, 3]  # type: ignore[attr-defined]
    for client in job.clients:  # type: ignore[attr-defined]
        assert client.refused == {"unsigned": 2}
        assert client.rounds_trained == 3 and client.end_reason == "stopped"


async def test_without_sign_a_stop_copying_the_run_id_ends_the_clients(tmp_path: Path) -> None:
    """What the docs say: unsigned broadcasts are only as safe as the broker's ACLs."""
    transport = LocalTransport()
    job = await attack_during_job([transport] * 4, transport, sign=None, round_timeout=1.0)
    assert all(c.end_reason == "stopped" and c.rounds_trained == 1
               for c in job.clients)  # type: ignore[attr-defined]
    assert [r.status for r in job.server.history] == ["ok", "no_quorum", "no_quorum"]  # type: ignore[attr-defined]


async def test_without_sign_a_stop_of_another_run_is_refused(tmp_path: Path) -> None:
    """An outsider who cannot read the topic does not know the run id: its stop is ignored."""
    transport = LocalTransport()
    job = make_job(rounds=2)

    async def attack(rnd: int) -> None:
        if rnd == 2:
            await transport.publish(model_topic(job.job_id), forged_stop(job.job_id, "guess"))
            await until(lambda: all(c.refused for c in job.clients), what="stops seen")

    job.server.before_round = attack
    await run_job_graphs(job, transport, [transport] * 3)
    assert [r.accepted for r in job.server.history] == [3, 3]
    assert all(c.refused == {"other_run": 1} for c in job.clients)
