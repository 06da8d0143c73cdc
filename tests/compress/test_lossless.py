"""zstd and lzma round-trip bit-exactly and refuse corrupted or oversized input clearly."""

from __future__ import annotations

import lzma

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from foedus.codec import decode as wire_decode
from foedus.codec import encode as wire_encode
from foedus.compress.base import Decoder, Encoder
from foedus.compress.lossless import (
    BODY,
    LzmaDecoder,
    LzmaEncoder,
    LzmaStage,
    ZstdDecoder,
    ZstdEncoder,
    ZstdStage,
)
from foedus.core.errors import CodecError, ConfigError, RejectedUpdate
from foedus.core.filter import stages
from foedus.core.message import Kind, Message

from .helpers import update, weights

CODECS = {
    "zstd-1": (lambda: ZstdEncoder(level=1), ZstdDecoder),
    "zstd-9-threads": (lambda: ZstdEncoder(level=9, threads=2), ZstdDecoder),
    "lzma": (lambda: LzmaEncoder(preset=1), LzmaDecoder),
}
DTYPES = ["bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", ">f4"]

arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        elements=None if np.dtype(dt).kind != "f" else st.floats(allow_nan=True, width=16),
    )
)
param_sets = st.dictionaries(st.text(min_size=1, max_size=8), arrays, max_size=5)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=") and (
        np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes() == b.tobytes()
    )


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=40, deadline=None)
@given(params=param_sets)
def test_round_trip_is_bit_exact_for_any_arrays(codec: str, params: dict[str, np.ndarray]) -> None:
    make_encoder, make_decoder = CODECS[codec]
    msg = update(params)
    decoded = make_decoder()(make_encoder()(msg))
    assert decoded is not None
    assert list(decoded.params) == list(params)
    for name, original in params.items():
        assert same_bits(original, decoded.params[name]), name
    assert decoded.trail == ()
    assert dict(decoded.meta) == {}


@pytest.mark.parametrize("codec", CODECS)
def test_encoded_update_is_one_uint8_array_that_crosses_the_wire(codec: str) -> None:
    make_encoder, make_decoder = CODECS[codec]
    params = weights()
    encoded = make_encoder()(update(params))
    assert encoded is not None
    assert list(encoded.params) == [BODY] and encoded.params[BODY].dtype == np.uint8
    assert encoded.trail == (encoded.meta and make_encoder().tag,)
    decoded = make_decoder()(wire_decode(wire_encode(encoded)))
    assert decoded is not None
    for name in params:
        assert same_bits(params[name], decoded.params[name])


def test_compressible_updates_shrink() -> None:
    sparse = {"w": np.zeros(100_000, np.float32)}
    sparse["w"][::100] = 1.0
    for encoder in (ZstdEncoder(), LzmaEncoder()):
        out = encoder(update(sparse))
        assert out is not None
        assert out.params[BODY].nbytes < 0.05 * sparse["w"].nbytes


@pytest.mark.parametrize("codec", CODECS)
def test_flipped_bytes_give_a_codec_error(codec: str) -> None:
    make_encoder, make_decoder = CODECS[codec]
    encoded = make_encoder()(update(weights()))
    assert encoded is not None
    body = encoded.params[BODY].copy()
    rng = np.random.default_rng(0)
    for _ in range(20):
        damaged = body.copy()
        spots = rng.integers(0, damaged.size, 4)
        damaged[spots] ^= np.uint8(0xA5)
        with pytest.raises(CodecError):
            make_decoder()(encoded.replace(params={BODY: damaged}))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_truncated_or_extended_body_gives_a_codec_error(codec: str, cut: int) -> None:
    make_encoder, make_decoder = CODECS[codec]
    encoded = make_encoder()(update(weights()))
    assert encoded is not None
    body = encoded.params[BODY]
    damaged = np.concatenate([body, body[:5]]) if cut == -1 else body[: body.size - 1 - cut * 7]
    with pytest.raises(CodecError):
        make_decoder()(encoded.replace(params={BODY: damaged}))


@pytest.mark.parametrize("codec", CODECS)
def test_table_larger_than_the_limit_is_refused_before_decompressing(codec: str) -> None:
    make_encoder, make_decoder = CODECS[codec]
    encoded = make_encoder()(update({"w": np.zeros(1000, np.float64)}))
    assert encoded is not None
    with pytest.raises(CodecError, match="max_decoded_size"):
        make_decoder(max_decoded_size=4000)(encoded)


def test_zstd_bomb_announcing_more_than_the_table_is_refused() -> None:
    """A frame of 100 MB of zeros (a few KB compressed) posing as a 16-byte update."""
    import zstandard

    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(100 * 1024**2))
    msg = update({"w": np.zeros(2, np.float64)})
    encoded = ZstdEncoder()(msg)
    assert encoded is not None
    hostile = encoded.replace(params={BODY: np.frombuffer(bomb, np.uint8)})
    with pytest.raises(CodecError, match="announces"):
        ZstdDecoder()(hostile)


def test_zstd_bomb_without_announced_size_is_cut_at_the_table_size() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(
        bytes(50 * 1024**2)
    )
    encoded = ZstdEncoder()(update({"w": np.zeros(2, np.float64)}))
    assert encoded is not None
    with pytest.raises(CodecError):
        ZstdDecoder()(encoded.replace(params={BODY: np.frombuffer(bomb, np.uint8)}))


def test_lzma_bomb_is_cut_at_the_table_size() -> None:
    bomb = lzma.compress(bytes(50 * 1024**2), preset=1)
    encoded = LzmaEncoder()(update({"w": np.zeros(2, np.float64)}))
    assert encoded is not None
    with pytest.raises(CodecError, match="exactly"):
        LzmaDecoder()(encoded.replace(params={BODY: np.frombuffer(bomb, np.uint8)}))


@pytest.mark.parametrize("table", [
    "not a list", [["w", "object", [2]]], [["w", "<f8", [-1]]],
    [["w", "<f8", [2]], ["w", "<f8", [2]]],
])
def test_malformed_tables_give_a_codec_error(table: object) -> None:
    encoded = ZstdEncoder()(update({"w": np.zeros(2, np.float64)}))
    assert encoded is not None
    with pytest.raises(CodecError):
        ZstdDecoder()(encoded.replace(meta={"zstd": {"table": table}}))


def test_decoders_must_run_in_reverse_order_of_the_encoders() -> None:
    msg = update(weights())
    both = LzmaEncoder()(ZstdEncoder()(msg))  # zstd first, then lzma
    assert both is not None and both.trail == ("zstd", "lzma")
    with pytest.raises(CodecError, match="last filter applied was 'lzma'"):
        ZstdDecoder()(both)
    undone = ZstdDecoder()(LzmaDecoder()(both))
    assert undone is not None and undone.trail == ()
    assert all(same_bits(msg.params[k], undone.params[k]) for k in msg.params)


def test_a_decoder_refuses_a_message_that_was_never_encoded() -> None:
    with pytest.raises(CodecError, match="applied was 'nothing'"):
        ZstdDecoder()(update(weights()))


def test_error_messages_pass_through_both_halves_untouched() -> None:
    failed = Message.create(Kind.ERROR, job_id="job", round=1, sender="c", error="boom")
    assert ZstdEncoder()(failed) is failed
    assert ZstdDecoder()(failed) is failed


def test_a_corrupted_update_is_refused_as_bad_encoding_for_the_server_to_count() -> None:
    encoded = ZstdEncoder()(update(weights(), round=3, sender="client-004"))
    assert encoded is not None
    damaged = encoded.replace(params={BODY: encoded.params[BODY][:-3]})
    decoder = ZstdDecoder()
    with pytest.raises(RejectedUpdate) as refused:
        decoder(damaged)
    assert refused.value.reason == "bad_encoding" and decoder.failures == 1
    assert isinstance(refused.value, CodecError)  # what decoding failures have always been


def test_stages_are_registered_and_validate_their_settings() -> None:
    stage = stages.create("zstd", level=5, threads=1)
    assert isinstance(stage, ZstdStage)
    assert isinstance(stage.client(), Encoder) and isinstance(stage.server(), Decoder)
    assert isinstance(stages.create("lzma", preset=2), LzmaStage)
    with pytest.raises(ConfigError, match="level"):
        stages.create("zstd", level=99)
    with pytest.raises(ConfigError, match="preset"):
        stages.create("lzma", preset=12)
    with pytest.raises(ConfigError, match="no parameter"):
        stages.create("zstd", speed=3)
