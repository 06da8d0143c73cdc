"""Whatever a message holds, signature checks refuse it and count it; they never raise.

A message whose content no signer could have digested (a metric that is not a number, an
integer beyond 64 bits) used to make the digest raise inside the verifier, which the runtime
logged as a pod failure with a traceback, once per message. Such content reaches a verifier
only in-graph (the codec refuses it on the wire), but the verifier is the server's first check,
so it must stand on its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from foedus.core.message import Kind, Message
from foedus.security.signing import (
    BroadcastSigner,
    BroadcastVerifier,
    SignFilter,
    VerifyFilter,
    create_signing_keys,
    load_private_key,
    load_public_key,
    load_public_keys,
)
from foedus.testing import run_pod

#: content no signer could have digested, put into a signed message (the signature stays)
HOSTILE: dict[str, Callable[[Message], dict[str, Any]]] = {
    "a metric that is text": lambda m: {"metrics": MappingProxyType({"loss": "abc"})},
    "a metric that is a map": lambda m: {"metrics": MappingProxyType({"loss": {"a": 1}})},
    "a metric that is None": lambda m: {"metrics": MappingProxyType({"loss": None})},
    "an integer beyond 64 bits in meta": lambda m: {
        "meta": MappingProxyType({**m.meta, "x": 2**70})},
}


def message(kind: Kind = Kind.UPDATE, sender: str = "client-000") -> Message:
    return Message.create(kind, job_id="j", round=1, sender=sender,
                          params={"w": np.ones(3)}, num_examples=4, metrics={"loss": 0.5})


def spoiled(signed: Message, change: Callable[[Message], dict[str, Any]]) -> Message:
    """The signed message with some content replaced in place (the signature stays)."""
    return dataclasses.replace(signed, **change(signed))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    create_signing_keys(tmp_path, ["server", "client-000"])
    return tmp_path


def test_the_update_verifier_counts_undigestable_updates_as_bad_signatures_and_goes_on(
    keys: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    signed = SignFilter(load_private_key(keys / "client-000.key")).process(message())
    assert signed is not None
    verify = VerifyFilter(load_public_keys(keys / "public"))
    hostile = [spoiled(signed, change) for change in HOSTILE.values()]
    with caplog.at_level(logging.WARNING):
        out = run_pod(verify, {"in": [*hostile, signed]})  # re-raises a handler's failure
    assert [m.header.message_id for m in out["out"]] == [signed.header.message_id]
    assert verify.rejected == {"bad_signature": len(HOSTILE)}
    refusals = [r for r in caplog.records if "refused message" in r.getMessage()]
    assert len(refusals) == len(HOSTILE) and not any(r.exc_info for r in caplog.records)


def test_the_broadcast_verifier_counts_undigestable_broadcasts_as_bad_signatures(
    keys: Path,
) -> None:
    signer = BroadcastSigner(load_private_key(keys / "server.key"))
    verifier = BroadcastVerifier(load_public_key(keys / "public" / "server.pub"))
    signed = signer(message(Kind.MODEL, "server"))
    verifier.check(signed)  # the genuine broadcast passes
    for change in HOSTILE.values():
        with pytest.raises(Exception) as caught:
            verifier.check(spoiled(signed, change))
        assert type(caught.value).__name__ == "RejectedUpdate"
    assert verifier.rejected == {"bad_signature": len(HOSTILE)} and verifier.verified == 1
