"""Lossless compression of an update's parameters: zstd and lzma, bit-exact.

The encoder lays every parameter's bytes end to end, compresses that body, and sends it as one
uint8 array with the array table in ``meta[tag]``. The decoder knows from the table exactly how
many bytes to expect, refuses tables that would exceed ``max_decoded_size``, and never lets the
decompressor produce more than that (zip-bomb safety): zstd's announced frame size is checked
before decompressing and its output is capped, lzma is read with ``max_length`` and a memory limit.
zstd frames carry a content checksum and xz streams a CRC-64, so a damaged body is detected even
if whoever damaged it also recomputed the message's CRC.

Use them last in a pipeline (after quantisation or sparsification, whose output they shrink
further). Random float32 weights barely compress (about 5-10%); see docs/compression.md.
"""

from __future__ import annotations

import lzma
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from foedus.compress.base import (
    DEFAULT_MAX_DECODED,
    Decoder,
    Encoder,
    check_stage_size,
    get_array,
    make_table,
    pack_raw,
    read_table,
    table_nbytes,
    unpack_raw,
)
from foedus.core.errors import CodecError, ConfigError, require
from foedus.core.filter import LOSSLESS, Filter, Stage, stages
from foedus.core.message import Message

BODY = "body"  # name of the compressed array inside an encoded message


def _encoded(msg: Message, tag: str, compressed: bytes) -> Message:
    table = make_table(msg.params)
    body = np.frombuffer(compressed, dtype=np.uint8)
    return msg.replace(params={BODY: body}, meta={**msg.meta, tag: {"table": table}})


def _read(decoder: Decoder, msg: Message, entry: Mapping[str, Any]) -> tuple[Any, int, bytes]:
    table = read_table(entry.get("table"), decoder.name)
    expected = table_nbytes(table)
    decoder.check_size(expected)
    if set(msg.params) != {BODY}:
        raise CodecError(f"{decoder.name}: encoded update must hold exactly one array {BODY!r}")
    body = get_array(msg.params, BODY, np.uint8, decoder.name)
    return table, expected, body.tobytes()


# ---- zstd ----------------------------------------------------------------------------------
class ZstdEncoder(Encoder):
    tag: ClassVar[str] = "zstd"
    pushes = (tag,)

    def __init__(self, level: int = 3, threads: int = 0, name: str = "zstd-encode") -> None:
        super().__init__(name)
        zstd = require("zstandard", "compress")
        self._compressor = zstd.ZstdCompressor(
            level=level, threads=threads, write_content_size=True, write_checksum=True
        )

    def encode(self, msg: Message) -> Message:
        return _encoded(msg, self.tag, self._compressor.compress(pack_raw(msg.params)))


class ZstdDecoder(Decoder):
    tag: ClassVar[str] = "zstd"
    pops = (tag,)

    def __init__(self, max_decoded_size: int = DEFAULT_MAX_DECODED,
                 name: str = "zstd-decode") -> None:
        super().__init__(name, max_decoded_size=max_decoded_size)
        self._zstd: Any = require("zstandard", "compress")
        # a hostile frame may ask for a huge window; 2**27 bytes is zstd's own default ceiling
        self._decompressor = self._zstd.ZstdDecompressor(max_window_size=2**27)

    def decode(self, msg: Message, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        table, expected, body = _read(self, msg, entry)
        try:
            frame = self._zstd.get_frame_parameters(body)
            # zstd trusts a frame's announced size over max_output_size, so check it first
            if frame.content_size not in (expected, self._zstd.CONTENTSIZE_UNKNOWN):
                raise CodecError(
                    f"{self.name}: frame announces {frame.content_size} bytes, "
                    f"the table describes {expected}"
                )
            raw = self._decompressor.decompress(
                body, max_output_size=max(expected, 1), allow_extra_data=False
            )
        except self._zstd.ZstdError as exc:
            raise CodecError(f"{self.name}: corrupted zstd body: {exc}") from exc
        return unpack_raw(raw, table, self.name)


class ZstdStage(Stage):
    """``- {type: zstd, params: {level: 3, threads: 0}}``; ``threads: -1`` uses every core."""

    privacy_operations = (LOSSLESS,)
    requires_extra: ClassVar[str | None] = "compress"  # zstandard (lzma is in the stdlib)

    def __init__(self, level: int = 3, threads: int = 0,
                 max_decoded_size: int = DEFAULT_MAX_DECODED) -> None:
        zstd = require("zstandard", "compress")
        if not isinstance(level, int) or not -(2**17) <= level <= zstd.MAX_COMPRESSION_LEVEL:
            raise ConfigError(f"zstd level must be an integer up to "
                              f"{zstd.MAX_COMPRESSION_LEVEL}, got {level!r}")
        if not isinstance(threads, int) or threads < -1:
            raise ConfigError(f"zstd threads must be an integer >= -1, got {threads!r}")
        self.level, self.threads = level, threads
        self.max_decoded_size = check_stage_size("zstd", max_decoded_size)

    def client(self) -> Filter:
        return ZstdEncoder(self.level, self.threads)

    def server(self) -> Filter:
        return ZstdDecoder(self.max_decoded_size)


# ---- lzma ----------------------------------------------------------------------------------
class LzmaEncoder(Encoder):
    tag: ClassVar[str] = "lzma"
    pushes = (tag,)

    def __init__(self, preset: int = 6, name: str = "lzma-encode") -> None:
        super().__init__(name)
        self.preset = preset

    def encode(self, msg: Message) -> Message:
        compressed = lzma.compress(pack_raw(msg.params), format=lzma.FORMAT_XZ, preset=self.preset)
        return _encoded(msg, self.tag, compressed)


class LzmaDecoder(Decoder):
    tag: ClassVar[str] = "lzma"
    pops = (tag,)
    MEMLIMIT: ClassVar[int] = 256 * 1024**2  # presets 0-9 need at most ~65 MiB to decompress

    def __init__(self, max_decoded_size: int = DEFAULT_MAX_DECODED,
                 name: str = "lzma-decode") -> None:
        super().__init__(name, max_decoded_size=max_decoded_size)

    def decode(self, msg: Message, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        table, expected, body = _read(self, msg, entry)
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=self.MEMLIMIT)
        try:
            raw = decompressor.decompress(body, max_length=expected + 1)
        except lzma.LZMAError as exc:
            raise CodecError(f"{self.name}: corrupted lzma body: {exc}") from exc
        if len(raw) != expected or not decompressor.eof or decompressor.unused_data:
            raise CodecError(
                f"{self.name}: lzma body does not decode to exactly the {expected} bytes the "
                "table describes (truncated, oversized or trailing data)"
            )
        return unpack_raw(raw, table, self.name)


class LzmaStage(Stage):
    """``- {type: lzma, params: {preset: 6}}``: smaller than zstd, and much slower."""

    privacy_operations = (LOSSLESS,)

    def __init__(self, preset: int = 6, max_decoded_size: int = DEFAULT_MAX_DECODED) -> None:
        if not isinstance(preset, int) or not 0 <= preset <= 9:
            raise ConfigError(f"lzma preset must be an integer 0-9, got {preset!r}")
        self.preset = preset
        self.max_decoded_size = check_stage_size("lzma", max_decoded_size)

    def client(self) -> Filter:
        return LzmaEncoder(self.preset)

    def server(self) -> Filter:
        return LzmaDecoder(self.max_decoded_size)


stages.register("zstd")(ZstdStage)
stages.register("lzma")(LzmaStage)
