"""The ``sign`` stage: Ed25519 signatures made by clients, checked by the server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from foedus.codec import decode, encode
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.filter import stages
from foedus.core.message import Kind, Message
from foedus.roles.server import RoundRecord
from foedus.runner import run_job, run_job_sync
from foedus.security.signing import (
    SIGNATURE_META,
    SignFilter,
    SignStage,
    VerifyFilter,
    create_signing_keys,
    load_private_key,
    load_public_keys,
)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    create_signing_keys(tmp_path, ["client-000", "client-001"])
    return tmp_path


def update(sender: str = "client-000", **kw: object) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=2, sender=sender,
                          params={"w": np.arange(6.0).reshape(2, 3), "s": np.array(1.5)},
                          num_examples=4, metrics={"loss": 0.25}, meta={"a": (1, 2)}, **kw)  # type: ignore[arg-type]


def test_key_files_are_private_and_the_registry_reads_the_public_directory(keys: Path) -> None:
    assert os.stat(keys / "client-000.key").st_mode & 0o077 == 0
    assert sorted(load_public_keys(keys / "public")) == ["client-000", "client-001"]


def test_a_signed_message_verifies_after_the_wire_and_comes_out_as_it_went_in(keys: Path) -> None:
    sign = SignFilter(str(keys / "{sender}.key"))
    verify = VerifyFilter(load_public_keys(keys / "public"))
    original = update()
    signed = sign(original)
    assert signed is not None and signed.trail == ("sign",)
    out = verify(decode(encode(signed)))
    assert out is not None and out.trail == () and SIGNATURE_META not in out.meta
    np.testing.assert_array_equal(out.params["w"], original.params["w"])
    assert dict(out.metrics) == dict(original.metrics) and verify.verified == 1


@pytest.mark.parametrize("change, reason", [
    (lambda m: m.replace(sender="client-001"), "bad_signature"),  # claims another name
    (lambda m: m.replace(round=3), "bad_signature"),  # replayed into another round
    (lambda m: m.replace(num_examples=4000), "bad_signature"),  # inflates its weight
    (lambda m: m.replace(params={**m.params, "w": m.params["w"] * 2}), "bad_signature"),
    (lambda m: m.replace(meta={"a": [1, 2]}), "unsigned"),  # signature stripped
    (lambda m: m.replace(sender="stranger"), "unknown_signer"),
    (lambda m: m.push_trail("zstd"), "unsigned"),  # a filter ran after signing
])
def test_any_change_after_signing_is_refused_with_its_reason(keys: Path, change, reason) -> None:  # type: ignore[no-untyped-def]
    signed = SignFilter(str(keys / "{sender}.key"))(update())
    verify = VerifyFilter(load_public_keys(keys / "public"))
    with pytest.raises(RejectedUpdate) as info:
        verify.check(change(signed))
    assert info.value.reason == reason
    assert verify.process(change(signed)) is None and verify.rejected == {reason: 1}


def test_a_client_without_its_key_cannot_send_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read signing key"):
        SignFilter(str(tmp_path / "{sender}.key"))(update())


def test_keys_of_the_wrong_kind_and_empty_registries_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "x.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot read public key"):
        load_public_keys(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no public keys"):
        load_public_keys(tmp_path / "empty")
    with pytest.raises(ConfigError, match="private_key"):
        SignStage()
    with pytest.raises(ConfigError, match="public_keys is needed"):
        SignStage(private_key="k/{sender}.key").server()


def test_the_stage_folds_refused_messages_into_the_round_record(keys: Path) -> None:
    stage = SignStage(public_keys=str(keys / "public"))
    verifier = stage.server()
    assert isinstance(verifier, VerifyFilter)
    assert verifier.process(update()) is None  # unsigned
    record = RoundRecord(1)
    stage.after_round(record)
    assert record.rejected == {"unsigned": 1}
    stage.after_round(record)  # counted once
    assert record.rejected == {"unsigned": 1}


async def test_a_job_file_with_the_sign_stage_trains_and_every_update_is_verified(
    keys: Path,
) -> None:
    # the server's key too: with sign, it signs every broadcast and the clients verify them
    create_signing_keys(keys, ["client-002", "server"])
    assert "sign" in stages.names()
    spec = JobSpec.from_dict({
        "job_id": "signed", "rounds": 2, "clients": {"count": 3},
        "data": {"partition": "iid"},
        "pipeline": [{"type": "sign", "params": {
            "private_key": str(keys / "{sender}.key"), "public_keys": str(keys / "public")}}],
    })
    refused: list[str] = []
    result = await run_job(spec, on_round=lambda r: refused.extend(r.failed_clients))
    assert [r.accepted for r in result.history] == [3, 3]
    assert not refused  # every client accepted every signed broadcast
    assert all(not r.rejected for r in result.history)
    assert result.final_metrics["accuracy"] > 0.8
    assert load_private_key(keys / "client-002.key") is not None


def test_a_job_file_with_sign_but_no_server_key_is_refused_before_it_runs(keys: Path) -> None:
    spec = JobSpec.from_dict({
        "job_id": "signed", "rounds": 1, "clients": {"count": 2},
        "pipeline": [{"type": "sign", "params": {
            "private_key": str(keys / "{sender}.key"), "public_keys": str(keys / "public")}}],
    })
    with pytest.raises(ConfigError, match="cannot read the server's signing key"):
        run_job_sync(spec)
