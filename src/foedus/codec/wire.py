"""Binary wire format: a fixed prefix, a msgpack header, then raw array buffers.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"FOED"
    4       1     format version (1)
    5       3     reserved, zero
    8       4     header length H
    12      8     body length B
    20      4     CRC-32 of everything after the prefix
    24      H     msgpack header: routing fields, metrics, meta, and the array table
    ...           zero padding to a multiple of 8
    ...     B     array data, each array starting on a multiple of 8

The array table lists ``[name, dtype, shape, offset, nbytes]``. Decoding reads arrays with
``np.frombuffer``: zero-copy, read-only views into the received buffer. Nothing is ever unpickled
or imported; dtypes come from a fixed allow-list; every length, offset and shape is checked against
the buffer before it is used, so hostile bytes raise :class:`CodecError` and nothing else.

The decoder is *total*: whatever the bytes, :func:`decode` returns a valid message or raises
:class:`CodecError` naming the reason. The explicit checks below cover every class of malformed
input we know of (shapes that are negative, overflow numpy's index type or disagree with the
byte count; dimensions beyond :data:`MAX_NDIM`; dtypes off the allow-list; header fields of the
wrong type or beyond 64 bits; metadata nested deeper than :data:`MAX_META_DEPTH`; non-string
metric and metadata keys). As a last line, any other exception raised while building the message
is turned into a ``CodecError`` too, because one frame a reader cannot parse must never stop it.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from foedus.core.errors import CodecError
from foedus.core.message import Kind, Message

MAGIC = b"FOED"
FORMAT_VERSION = 1
DEFAULT_MAX_SIZE = 2 * 1024**3  # 2 GiB; transports pass their own, smaller limits
_PREFIX = struct.Struct("<4sB3sIQI")
_ALIGN = 8
MAX_NDIM = 32
#: how deeply ``meta`` may nest lists and maps (a hostile peer could otherwise send a structure
#: that recursion over it, when freezing or re-encoding, cannot handle)
MAX_META_DEPTH = 32
#: numpy's index type: no dimension, and no product of the non-zero dimensions, may exceed it
_INTP_MAX = int(np.iinfo(np.intp).max)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
)


def _pad(n: int) -> int:
    return -n % _ALIGN


def encode(msg: Message) -> bytes:
    """Serialise a message. Each array's data is copied exactly once, into the output."""
    table: list[list[Any]] = []
    buffers: list[memoryview] = []
    offset = 0
    for name, value in msg.params.items():
        array = np.asarray(value)
        if array.dtype.str not in _ALLOWED_DTYPES:
            array = array.astype(array.dtype.newbyteorder("<"))
            if array.dtype.str not in _ALLOWED_DTYPES:
                raise CodecError(f"parameter {name!r} has unsupported dtype {value.dtype}")
        if not array.flags.c_contiguous:  # (ascontiguousarray would turn 0-d into 1-d)
            array = array.copy(order="C")
        table.append([name, array.dtype.str, list(array.shape), offset, array.nbytes])
        buffers.append(memoryview(array).cast("B") if array.nbytes else memoryview(b""))  # type: ignore[arg-type]
        offset += array.nbytes + _pad(array.nbytes)
    h = msg.header
    try:
        header = msgpack.packb(
            {
                "job": h.job_id, "round": h.round, "sender": h.sender, "kind": h.kind.value,
                "id": h.message_id, "ts": h.timestamp, "trail": list(h.trail), "to": h.recipient,
                "n": msg.num_examples, "metrics": dict(msg.metrics), "meta": _plain(msg.meta),
                "error": msg.error, "arrays": table,
            },
            use_bin_type=True,
        )
    except (TypeError, ValueError) as exc:
        raise CodecError(f"message metadata is not serialisable: {exc}") from exc
    parts: list[bytes | memoryview] = [header, bytes(_pad(len(header)))]
    for buf in buffers:
        parts.append(buf)
        parts.append(bytes(_pad(buf.nbytes)))
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, bytes(3), len(header), offset, crc)
    return b"".join([prefix, *parts])


def decode(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """Parse bytes from the wire into a message, or raise :class:`CodecError` saying why."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    size = view.nbytes
    if size > max_size:
        raise CodecError(f"message is {size} bytes, over the limit of {max_size}")
    if size < _PREFIX.size:
        raise CodecError(
            f"truncated message: {size} bytes, shorter than the {_PREFIX.size}-byte prefix"
        )
    magic, version, reserved, header_len, body_len, crc = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise CodecError(f"not a foedus message (magic {bytes(magic)!r})")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported format version {version}; this build reads {FORMAT_VERSION}")
    if reserved != bytes(3):
        raise CodecError("reserved prefix bytes must be zero (corrupted or newer format)")
    body_start = _PREFIX.size + header_len + _pad(header_len)
    if body_start + body_len != size:
        raise CodecError(
            f"length mismatch: prefix announces {body_start + body_len} bytes, got {size} "
            "(truncated or padded message)"
        )
    if zlib.crc32(view[_PREFIX.size :]) != crc:
        raise CodecError("checksum mismatch: the message was corrupted in transit")
    try:
        header = msgpack.unpackb(
            view[_PREFIX.size : _PREFIX.size + header_len], raw=False, strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"malformed header: {exc}") from exc
    try:
        return _build(header, view, body_start, body_len)
    except CodecError:
        raise
    except Exception as exc:  # the last line: a check we did not think of must still refuse
        raise CodecError(f"malformed message ({type(exc).__name__}: {exc})") from exc


def _build(header: Any, view: memoryview, body_start: int, body_len: int) -> Message:
    h = _expect(header, dict, "header")
    try:
        kind = Kind(_expect(h.get("kind"), str, "kind"))
    except ValueError as exc:
        raise CodecError(f"unknown message kind {h.get('kind')!r}") from exc
    params: dict[str, np.ndarray] = {}
    end_of_last = 0
    for entry in _expect(h.get("arrays"), list, "arrays"):
        name, dtype_str, shape, offset, nbytes = _array_entry(entry)
        if name in params:
            raise CodecError(f"array {name!r} appears twice")
        dtype = np.dtype(dtype_str)
        count = math.prod(shape)  # Python ints: a hostile shape cannot overflow
        if count * dtype.itemsize != nbytes:
            raise CodecError(f"array {name!r}: shape {shape} and dtype {dtype_str} need "
                             f"{count * dtype.itemsize} bytes, table says {nbytes}")
        # numpy refuses shapes whose non-zero dimensions multiply beyond its index type, even
        # when another dimension is 0 (shape [0, 2**64-1] holds no bytes yet cannot be built)
        if math.prod(d for d in shape if d) * dtype.itemsize > _INTP_MAX:
            raise CodecError(f"array {name!r}: shape {list(shape)} is too large for numpy")
        if offset < end_of_last or offset % _ALIGN or offset + nbytes > body_len:
            raise CodecError(f"array {name!r}: offset {offset} is outside the body or overlaps")
        end_of_last = offset + nbytes
        array = np.frombuffer(view, dtype=dtype, count=count, offset=body_start + offset)
        params[name] = array.reshape(shape)
    metrics = _expect(h.get("metrics"), dict, "metrics")
    if not all(isinstance(k, str) for k in metrics):
        raise CodecError("metric names must be strings")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
        raise CodecError("metrics must map names to numbers")
    meta = _expect(h.get("meta"), dict, "meta")
    _check_meta(meta, 1)
    trail = _expect(h.get("trail"), list, "trail")
    if not all(isinstance(t, str) for t in trail):
        raise CodecError("trail must be a list of strings")
    recipient = h.get("to")
    error = h.get("error")
    if recipient is not None and not isinstance(recipient, str):
        raise CodecError("recipient must be a string")
    if error is not None and not isinstance(error, str):
        raise CodecError("error must be a string")
    num_examples = _expect(h.get("n"), int, "n")
    if num_examples < 0:
        raise CodecError(f"num_examples must not be negative, got {num_examples}")
    if num_examples > _INT64_MAX:
        raise CodecError(f"num_examples {num_examples} does not fit in 64 bits")
    round_ = _expect(h.get("round"), int, "round")
    if not _INT64_MIN <= round_ <= _INT64_MAX:
        raise CodecError(f"round {round_} does not fit in 64 bits")
    ts = float(_expect(h.get("ts"), int | float, "ts"))
    if not math.isfinite(ts):
        raise CodecError(f"timestamp {ts} is not a finite number")
    return Message.create(
        kind,
        job_id=_expect(h.get("job"), str, "job"),
        round=round_,
        sender=_expect(h.get("sender"), str, "sender"),
        params=params,
        num_examples=num_examples,
        metrics=metrics,
        meta=meta,
        error=error,
        recipient=recipient,
        trail=tuple(trail),
    ).replace(
        message_id=_expect(h.get("id"), str, "id"),
        timestamp=ts,
    )


def _array_entry(entry: Any) -> tuple[str, str, tuple[int, ...], int, int]:
    if not isinstance(entry, list) or len(entry) != 5:
        raise CodecError("array table entries must be [name, dtype, shape, offset, nbytes]")
    name, dtype_str, shape, offset, nbytes = entry
    if not isinstance(name, str):
        raise CodecError("array name must be a string")
    if not isinstance(dtype_str, str) or dtype_str not in _ALLOWED_DTYPES:
        raise CodecError(f"array {name!r}: dtype {dtype_str!r} is not allowed")
    if (
        not isinstance(shape, list) or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise CodecError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} sizes")
    for label, value in (("offset", offset), ("nbytes", nbytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CodecError(f"array {name!r}: {label} must be a non-negative integer")
    return name, dtype_str, tuple(shape), offset, nbytes


def _check_meta(value: Any, depth: int) -> None:
    """Metadata is plain data: string keys, nesting at most :data:`MAX_META_DEPTH` deep."""
    if depth > MAX_META_DEPTH:
        raise CodecError(f"meta is nested deeper than {MAX_META_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CodecError(f"meta keys must be strings, got {type(k).__name__}")
            _check_meta(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_meta(v, depth + 1)


def _expect(value: Any, kind: Any, field: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CodecError(f"header field {field!r} is missing or has the wrong type")
    return value


def _plain(meta: Mapping[str, Any]) -> Any:
    """Turn read-only mapping proxies into dicts so msgpack can serialise nested metadata."""
    if isinstance(meta, Mapping):
        return {k: _plain(v) for k, v in meta.items()}
    if isinstance(meta, list | tuple):
        return [_plain(v) for v in meta]
    return meta
