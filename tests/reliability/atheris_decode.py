"""Coverage-guided fuzzing of the message decoder with atheris (libFuzzer), for the test suite.

``python -m tests.reliability.atheris_decode CORPUS_DIR -runs=N``: any exception other than
``CodecError`` (or a crash) ends the run with a non-zero status and a reproducer file.

Each input is decoded twice: as raw bytes (the prefix, length and checksum checks), and framed
with a correct prefix and CRC-32 around it (the first two bytes choose where the msgpack header
ends and the array body begins), so the fuzzer also explores header and array-table validation,
which random bytes almost never reach past the checksum.
"""

from __future__ import annotations

import contextlib
import struct
import sys
import zlib

import atheris
import msgpack  # noqa: F401  (imported before instrumentation: only foedus code is traced)
import numpy  # noqa: F401

with atheris.instrument_imports():
    from foedus.codec import wire
    from foedus.core.errors import CodecError


def framed(data: bytes) -> bytes:
    split = int.from_bytes(data[:2], "little") % max(len(data) - 1, 1) if len(data) > 2 else 0
    header, body = data[2 : 2 + split], data[2 + split :]
    body += bytes(-len(body) % 8)
    padded = header + bytes(-len(header) % 8) + body
    prefix = struct.pack("<4sB3sIQI", b"FOED", 1, bytes(3), len(header), len(body),
                         zlib.crc32(padded))
    return prefix + padded


def one_input(data: bytes) -> None:
    for candidate in (data, framed(data)):
        with contextlib.suppress(CodecError):
            wire.decode(candidate)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
