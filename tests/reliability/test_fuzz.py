"""Fuzzing every parser that reads bytes from the network, with hypothesis.

The property is the same everywhere: hostile bytes raise the parser's own documented error
(``CodecError``, ``ValueError``, ``Refused``, ``RejectedUpdate``) and nothing else, never crash,
and never let a changed message through. A live server fed a stream of fuzzed payloads between
honest updates completes its round with exactly the honest updates.
"""

from __future__ import annotations

import asyncio
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foedus.aggregate.fedavg import FedAvg
from foedus.codec import decode, encode
from foedus.core.errors import CodecError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.roles.server import ServerPod
from foedus.security.signing import SignFilter, VerifyFilter
from foedus.topology.centralized import server_graph, topics
from foedus.transport import chunks
from foedus.transport.hub import Publication, Refused, require_sender_identity
from foedus.transport.local import LocalTransport

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(**kw: Any) -> Message:
    params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3),
              "n": np.array(7, np.int64)}
    base: dict[str, Any] = dict(job_id="fuzz", round=3, sender="client-000", params=params,
                                num_examples=5, metrics={"loss": 0.5}, meta={"k": [1, 2]})
    return Message.create(Kind.UPDATE, **(base | kw))


VALID = encode(sample())


def frame(header: Any, body: bytes = b"") -> bytes:
    """Bytes with a well-formed prefix and a *correct* checksum around any msgpack header, so
    the fuzzer gets past the CRC and reaches the header and array-table validation."""
    packed = msgpack.packb(header, use_bin_type=True)
    padded = packed + bytes(-len(packed) % 8) + body
    prefix = struct.pack("<4sB3sIQI", b"FOED", 1, bytes(3), len(packed), len(body),
                         zlib.crc32(padded))
    return prefix + padded


def decode_or_codec_error(data: bytes) -> Message | None:
    try:
        return decode(data)
    except CodecError:
        return None


def assert_valid(msg: Message, body_len: int) -> None:
    """What ``decode`` returns is a message every later stage can rely on."""
    h = msg.header
    assert all(isinstance(v, str) for v in (h.job_id, h.sender, h.message_id))
    assert isinstance(h.round, int) and -(2**63) <= h.round < 2**63
    assert 0 <= msg.num_examples < 2**63
    assert all(isinstance(k, str) for k in msg.metrics)
    for array in msg.params.values():
        assert array.nbytes <= body_len
        assert array.size * array.itemsize == array.nbytes
        assert not array.flags.writeable


# ---- the codec -------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    decode_or_codec_error(data)
    decode_or_codec_error(VALID[:24] + data)  # a valid prefix followed by garbage


@FUZZ
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_every_single_byte_change_of_a_message_is_detected(index: int, xor: int) -> None:
    changed = bytearray(VALID)
    changed[index] ^= xor
    with pytest.raises(CodecError):
        decode(bytes(changed))


@FUZZ
@given(st.integers(0, len(VALID) - 1))
def test_every_truncation_is_detected(length: int) -> None:
    with pytest.raises(CodecError):
        decode(VALID[:length])


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
dtypes = st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", ">f4", "<U4", "|O", "xx", 3])
entries = st.one_of(
    st.tuples(st.text(max_size=4), dtypes,
              st.lists(st.integers(-2, 2**40), max_size=4), st.integers(-8, 64),
              st.integers(-8, 2**40)).map(list),
    values,
)


@st.composite
def headers(draw: st.DrawFn) -> Any:
    """Header maps that are mostly right, with any field replaced by anything."""
    good: dict[str, Any] = {
        "job": "fuzz", "round": 1, "sender": "s", "kind": "update", "id": "x", "ts": 1.0,
        "trail": [], "to": None, "n": 1, "metrics": {}, "meta": {}, "error": None, "arrays": [],
    }
    for key in draw(st.lists(st.sampled_from(sorted(good)), max_size=4)):
        good[key] = draw(values)
    if draw(st.booleans()):
        good["arrays"] = draw(st.lists(entries, max_size=4))
    if draw(st.booleans()):
        del good[draw(st.sampled_from(sorted(good)))]
    return good if draw(st.integers(0, 9)) else draw(values)


@FUZZ
@given(headers(), st.binary(max_size=256).map(lambda b: b + bytes(-len(b) % 8)))
def test_checksummed_hostile_headers_raise_only_codec_errors(header: Any, body: bytes) -> None:
    msg = decode_or_codec_error(frame(header, body))
    if msg is not None:  # whatever got through is internally consistent
        for array in msg.params.values():
            assert array.nbytes <= len(body)
            assert not array.flags.writeable


# mutations of a *valid* frame: one field of its header, or one array entry's shape, dtype,
# offset or byte count, replaced by something plausible-looking or absurd; the CRC is recomputed
# so every mutation reaches the header and array-table checks
_HEADER_LEN = struct.unpack_from("<4sB3sIQI", VALID)[3]
VALID_HEADER: dict[str, Any] = msgpack.unpackb(VALID[24 : 24 + _HEADER_LEN], raw=False)
VALID_BODY = VALID[24 + _HEADER_LEN + (-_HEADER_LEN % 8):]
huge = st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
dims = st.one_of(huge, st.integers(-3, 64))
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.just([0, 2**64 - 1]), st.just([2**64 - 1, 0]), st.just([0, 2**63, 2**63]),
    st.lists(st.just(1), min_size=30, max_size=80),  # absurd ndim
    st.lists(st.integers(0, 3), max_size=40),
    values,
)
any_dtype = st.one_of(
    st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", "<c16", "<f2", ">f4", "<U4", "|O",
                     "|V8", "<M8[ns]", "<m8", "S3", "f4", "float32", "", "<f4\x00", "<" * 50]),
    values,
)
ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
nested = st.recursive(ints, lambda inner: st.lists(inner, min_size=1, max_size=1),
                      max_leaves=200)


def deep(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = {"k": [out]}
    return out


field_values = st.one_of(
    values, huge, nested, st.builds(deep, st.integers(1, 200)),
    st.dictionaries(st.one_of(ints, st.binary(max_size=4), st.text(max_size=3)),
                    st.one_of(st.floats(), ints, st.text(max_size=3)), max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> tuple[bytes, int]:
    header = msgpack.unpackb(msgpack.packb(VALID_HEADER), raw=False)  # a deep copy
    body = VALID_BODY
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["field", "shape", "dtype", "offset", "nbytes", "entry",
                                     "body"]))
        arrays = header.get("arrays")
        if not (isinstance(arrays, list) and arrays and isinstance(arrays[0], list)
                and len(arrays[0]) == 5):
            what = "field"  # the table itself was replaced: keep mutating fields
            entry: list[Any] = []
        else:
            entry = arrays[draw(st.integers(0, len(arrays) - 1))]
        if what == "field":
            header[draw(st.sampled_from(sorted(header)))] = draw(field_values)
        elif what == "shape":
            entry[2] = draw(shapes)
        elif what == "dtype":
            entry[1] = draw(any_dtype)
        elif what in ("offset", "nbytes"):
            entry[3 if what == "offset" else 4] = draw(st.one_of(huge, st.integers(-8, 200)))
        elif what == "entry":
            entry[draw(st.integers(0, 4))] = draw(field_values)
        else:
            cut = draw(st.integers(0, len(body)))
            body = body[:cut] + bytes(-cut % 8)
    return frame(header, body), len(body)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_valid_frames_decode_to_valid_messages_or_codec_errors(
    case: tuple[bytes, int],
) -> None:
    data, body_len = case
    try:
        msg = decode(data)
    except CodecError as exc:
        assert str(exc)  # always a reason
        return
    assert_valid(msg, body_len)


def test_the_poison_frame_of_the_attack_run_is_a_codec_error() -> None:
    """192 bytes, CRC-valid, an array of shape [0, 2**64-1]: zero bytes, yet numpy cannot
    build it. It used to escape ``decode`` as a ValueError and stop the server's intake."""
    header = dict(VALID_HEADER, arrays=[["w", "<f4", [0, 2**64 - 1], 0, 0]])
    with pytest.raises(CodecError, match="too large"):
        decode(frame(header))


# ---- transport framing and identity hooks ----------------------------------------------------


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 2**40))
def test_chunk_headers_raise_only_value_errors(data: bytes, size: int) -> None:
    """The chunk header Kafka and MQTT share: garbage is a ValueError; what passes fits the
    layout ``split`` produces (so a header cannot claim what its data does not back)."""
    prefix = chunks.MAGIC + bytes([chunks.VERSION])
    for blob in (data, prefix + data, (prefix + data)[: chunks.HEADER.size]):
        try:
            h = chunks.ChunkHeader.unpack(blob, size)
        except ValueError:
            continue
        assert h.index < h.count and h.offset + size <= h.total
        assert size or not h.total


@FUZZ
@given(st.integers(1, 5000), st.integers(1, 1500))
def test_every_chunk_split_produces_is_accepted(total: int, chunk_size: int) -> None:
    for h, data in chunks.split(bytes(total), chunk_size):
        assert chunks.ChunkHeader.unpack(h.pack(), len(data)) == h


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([None, "client-000", "client-001"]))
def test_hub_identity_check_refuses_anything_but_a_matching_sender(
    payload: bytes, identity: str | None,
) -> None:
    authorize = require_sender_identity()
    for blob in (payload, VALID, VALID[:-1]):
        pub = Publication("t", blob, None, False, identity)
        try:
            authorize(pub)
        except Refused:
            continue
        assert identity == "client-000" and blob == VALID  # the one legitimate case


@pytest.fixture(scope="module")
def signing_pair() -> tuple[SignFilter, VerifyFilter]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    return SignFilter(key), VerifyFilter({"client-000": key.public_key()})


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_change_to_a_signed_message_breaks_its_signature(
    signing_pair: tuple[SignFilter, VerifyFilter], data: st.DataObject,
) -> None:
    sign, verify = signing_pair
    wire = encode(sign(sample()))  # type: ignore[arg-type]
    assert verify.process(decode(wire)) is not None
    changed = bytearray(wire)
    index = data.draw(st.integers(0, len(wire) - 1))
    changed[index] ^= data.draw(st.integers(1, 255))
    try:
        msg = decode(bytes(changed))
    except CodecError:
        return  # the checksum caught it first
    with pytest.raises(RejectedUpdate):
        verify.check(msg)


# ---- a live server -------------------------------------------------------------------------


hostile_payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda i, x: bytes(b ^ x if n == i else b for n, b in enumerate(VALID)),
              st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.builds(frame, headers()),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(hostile_payloads, min_size=1, max_size=25))
def test_live_server_fed_fuzzed_payloads_completes_its_round_with_the_honest_updates(
    payloads: list[bytes],
) -> None:
    async def scenario() -> ServerPod:
        job = "fuzz"
        initial = {"w": np.zeros(3)}
        server = ServerPod(job_id=job, initial_params=initial, aggregator=FedAvg(),
                                rounds=1, expected_clients=2, round_timeout=5,
                                participants=["client-000", "client-001"])
        transport = LocalTransport()
        t = topics(job)
        sub = await transport.subscribe(t.model)

        async def clients() -> None:
            model = decode(await anext(aiter(sub)))
            for p in payloads[: len(payloads) // 2]:
                await transport.publish(t.updates, p)
            for name, value in (("client-000", 1.0), ("client-001", 3.0)):
                update = model.reply(Kind.UPDATE, name, num_examples=1,
                                     params={"w": np.full(3, value)})
                for p in payloads[len(payloads) // 2:]:
                    await transport.publish(t.updates, p)
                await transport.publish(t.updates, encode(update))

        task = asyncio.create_task(clients())
        async with Runtime(server_graph(server, transport)) as runtime:
            await asyncio.wait_for(runtime.wait(), 30)
            assert not runtime.stats.failures
        await task
        await transport.close()
        return server

    server = asyncio.run(scenario())
    [record] = server.history
    assert record.accepted == 2 and record.status == "ok"
    np.testing.assert_allclose(server.params["w"], 2.0)


# ---- found by atheris: an unhashable dtype in the array table --------------------------------


def _list_dtype_payload() -> bytes:
    header = {"job": "fuzz", "round": 1, "sender": "client-000", "kind": "update", "id": "x",
              "ts": 1.0, "trail": [], "to": None, "n": 1, "metrics": {}, "meta": {},
              "error": None, "arrays": [["w", ["<f8"], [3], 0, 24]]}
    return frame(header, bytes(24))


def test_an_unhashable_dtype_in_the_array_table_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode(_list_dtype_payload())


def test_one_unhashable_dtype_payload_does_not_stop_the_server_hearing_its_clients() -> None:
    async def scenario() -> ServerPod:
        server = ServerPod(job_id="fuzz", initial_params={"w": np.zeros(3)},
                                aggregator=FedAvg(), rounds=1, expected_clients=2,
                                round_timeout=2, participants=["client-000", "client-001"])
        transport = LocalTransport()
        t = topics("fuzz")
        sub = await transport.subscribe(t.model)

        async def clients() -> None:
            model = decode(await anext(aiter(sub)))
            await transport.publish(t.updates, _list_dtype_payload())
            for name in ("client-000", "client-001"):
                update = model.reply(Kind.UPDATE, name, num_examples=1,
                                     params={"w": np.ones(3)})
                await transport.publish(t.updates, encode(update))

        task = asyncio.create_task(clients())
        async with Runtime(server_graph(server, transport)) as runtime:
            await asyncio.wait_for(runtime.wait(), 30)
        await task
        await transport.close()
        return server

    server = asyncio.run(scenario())
    assert server.history[0].accepted == 2  # today: 0, the link died on the first payload


@pytest.mark.integration
def test_coverage_guided_fuzzing_of_the_decoder_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "valid").write_bytes(VALID)
    header_len = struct.unpack_from("<4sB3sIQI", VALID)[3]
    header = VALID[24 : 24 + header_len]
    body = VALID[24 + header_len + (-header_len % 8):]
    (corpus / "framed").write_bytes(header_len.to_bytes(2, "little") + header + body)
    # libFuzzer's memory limit reads the process's peak resident size, which Linux carries
    # across fork and exec: a child of a test worker that once held 2.6 GB "used" 2.6 GB
    # before its first input and was reported out of memory. The limit is 2 GB above that.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    run = subprocess.run(
        [sys.executable, "-m", "tests.reliability.atheris_decode", str(corpus), "-runs=100000",
         "-max_len=2048", "-seed=1", f"-artifact_prefix={tmp_path}/",
         f"-rss_limit_mb={inherited_mb + 2048}", "-malloc_limit_mb=2048"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
