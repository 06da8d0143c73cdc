"""Messages are immutable envelopes that share, never copy, their arrays."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.errors import PrivacyError
from foedus.core.message import Kind, Message


def make(**body: object) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=3, sender="c1", **body)  # type: ignore[arg-type]


def test_params_are_read_only_views_of_the_callers_arrays() -> None:
    weights = np.arange(6, dtype=np.float32)
    msg = make(params={"w": weights})
    assert np.shares_memory(msg.params["w"], weights)
    with pytest.raises(ValueError):
        msg.params["w"][0] = 99.0
    with pytest.raises(TypeError):
        msg.params["new"] = weights  # type: ignore[index]


def test_replace_returns_a_new_message_and_keeps_the_original() -> None:
    msg = make(num_examples=5, metrics={"loss": 1.0})
    changed = msg.replace(num_examples=7, round=4)
    assert (msg.num_examples, msg.round) == (5, 3)
    assert (changed.num_examples, changed.round) == (7, 4)
    assert changed.header.message_id == msg.header.message_id


def test_trail_records_filters_and_decoders_must_undo_them_in_reverse() -> None:
    msg = make().push_trail("clip").push_trail("zstd")
    assert msg.trail == ("clip", "zstd")
    assert msg.pop_trail("zstd").trail == ("clip",)
    with pytest.raises(PrivacyError, match="last filter applied was 'zstd'"):
        msg.pop_trail("clip")
    with pytest.raises(PrivacyError, match="no filter trail"):
        make().pop_trail("zstd")


def test_reply_is_addressed_to_the_sender_in_the_same_round() -> None:
    model = Message.create(Kind.MODEL, job_id="j", round=2, sender="server")
    reply = model.reply(Kind.UPDATE, "c7", num_examples=3)
    assert reply.header.recipient == "server"
    assert (reply.round, reply.sender, reply.kind) == (2, "c7", Kind.UPDATE)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        Message.create("gossip", job_id="j", round=0, sender="x")
