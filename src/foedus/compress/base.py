"""What every codec shares: paired encoder/decoder filters, the trail, and safe (un)packing.

A codec is a :class:`~foedus.core.filter.Stage` owning a client-side :class:`Encoder` and a
server-side :class:`Decoder`. The encoded update is still an ordinary message whose params are
numpy arrays (a uint8 body plus small arrays) and whose ``meta[tag]`` holds the small description
needed to undo it, so the wire codec carries it unchanged and codecs compose (``qsgd`` then
``zstd``): each decoder finds its own metadata under its own tag and removes it.

Decoders read untrusted input. Every size, dtype, shape and count is checked before it is used
and every failure is a :class:`~foedus.core.errors.CodecError`. A decoder refuses an update it
cannot undo, whatever went wrong, with a :class:`DecodeRefusal` (``bad_encoding``): a
:class:`~foedus.core.errors.RejectedUpdate`, which the runtime carries to the server, where it is
counted in the round's ``rejected`` and logged in one line, and counts as that sender's answer
(the round does not wait for it until the deadline).

*Delta mode.* Lossy codecs work far better on the change a client made this round than on its
full weights. Both halves then need the round's global model: encoders and decoders with
``delta=True`` get an extra input wire ``model`` and remember the global model seen on it
(:class:`ReferenceModel`). Every topology connects that wire to the global model stream (see
:mod:`foedus.core.filter`): on a client the downlink, on the server the server's ``model`` output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from foedus.core.errors import CodecError, ConfigError, RejectedUpdate
from foedus.core.filter import Filter
from foedus.core.message import Kind, Message
from foedus.core.params import Params

#: default ceiling on a decoded update (zip-bomb safety); each stage takes ``max_decoded_size``
DEFAULT_MAX_DECODED = 1024**3
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
)
_MAX_NDIM = 32
_MAX_ARRAYS = 100_000

Table = list[list[Any]]  # [[name, dtype str, shape list], ...] in parameter order

#: why a decoder refuses an update (counted in the round's ``rejected``)
BAD_ENCODING = "bad_encoding"


class DecodeRefusal(RejectedUpdate, CodecError):
    """A decoder cannot undo one update: a :class:`RejectedUpdate` (the server counts it under
    ``bad_encoding``) and a :class:`CodecError` (what decoding failures have always been)."""


# ---- table of arrays: how a decoder learns what to rebuild -----------------------------------
def check_flag(stage: str, name: str, value: Any) -> bool:
    """A true/false stage option. ``bool(value)`` would take the string ``"false"`` (or
    ``"no"``) for true and silently do the opposite of what the job file says."""
    if not isinstance(value, bool):
        raise ConfigError(f"{stage} {name} must be true or false, got {value!r}")
    return value


def check_stage_size(stage: str, value: Any) -> int:
    """``max_decoded_size``: a positive number of bytes (a string used to pass until the
    first update was decoded)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{stage} max_decoded_size must be a positive integer (bytes), "
                          f"got {value!r}")
    return value


def make_table(params: Params) -> Table:
    """Describe arrays by name, little-endian dtype and shape (msgpack-friendly lists)."""
    return [[name, _le(a.dtype).str, list(a.shape)] for name, a in params.items()]


def read_table(raw: Any, where: str) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
    """Validate a table received from the network; raise :class:`CodecError` on anything odd."""
    if not isinstance(raw, list) or len(raw) > _MAX_ARRAYS:
        raise CodecError(f"{where}: array table must be a list of at most {_MAX_ARRAYS} entries")
    out: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
    seen: set[str] = set()
    for entry in raw:
        if not isinstance(entry, list) or len(entry) != 3:
            raise CodecError(f"{where}: table entries must be [name, dtype, shape]")
        name, dtype, shape = entry
        if not isinstance(name, str) or name in seen:
            raise CodecError(f"{where}: array names must be unique strings, got {name!r}")
        if dtype not in _ALLOWED_DTYPES:
            raise CodecError(f"{where}: array {name!r} has disallowed dtype {dtype!r}")
        if (
            not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise CodecError(f"{where}: array {name!r} has an invalid shape {shape!r}")
        seen.add(name)
        out.append((name, np.dtype(dtype), tuple(shape)))
    return out


def table_nbytes(table: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> int:
    """Bytes the described arrays occupy (Python ints: a hostile shape cannot overflow)."""
    return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in table)


def pack_raw(params: Params) -> bytes:
    """All arrays' little-endian bytes back to back, in parameter order (one copy)."""
    return b"".join(np.ascontiguousarray(a, dtype=_le(a.dtype)).tobytes() for a in params.values())


def unpack_raw(
    body: bytes | bytearray | memoryview,
    table: list[tuple[str, np.dtype[Any], tuple[int, ...]]],
    where: str,
) -> dict[str, np.ndarray]:
    """Split a raw body back into named arrays; views into ``body``, never copies."""
    if len(body) != table_nbytes(table):
        raise CodecError(
            f"{where}: body holds {len(body)} bytes, the table describes {table_nbytes(table)}"
        )
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape in table:
        count = math.prod(shape)
        out[name] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    return out


def _le(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def split_float(params: Params) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(floating-point params, the rest): lossy codecs touch only the first."""
    floats = {k: np.asarray(v) for k, v in params.items() if np.asarray(v).dtype.kind == "f"}
    rest = {k: np.asarray(v) for k, v in params.items() if k not in floats}
    return floats, rest


def flat_float32(params: Params) -> np.ndarray:
    """Concatenate float arrays into one float32 vector (one copy), the lossy codecs' input."""
    if not params:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in params.values()])


def unflat(
    vector: np.ndarray, table: list[tuple[str, np.dtype[Any], tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """Cut a flat vector into the arrays a table describes, cast to their dtypes."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape in table:
        n = math.prod(shape)
        out[name] = vector[offset : offset + n].reshape(shape).astype(dtype, copy=False)
        offset += n
    return out


def meta_entry(msg: Message, tag: str) -> Mapping[str, Any]:
    """The mapping an encoder left under ``meta[tag]``, or a :class:`CodecError`."""
    entry = msg.meta.get(tag)
    if not isinstance(entry, Mapping):
        raise CodecError(f"{tag}: message has no {tag!r} metadata to decode")
    return entry


def reorder(
    params: dict[str, np.ndarray], entry: Mapping[str, Any], where: str
) -> dict[str, np.ndarray]:
    """Put decoded arrays back in the sender's order (``entry["order"]``): servers check it."""
    order = entry.get("order")
    if (
        not isinstance(order, list) or not all(isinstance(n, str) for n in order)
        or sorted(order) != sorted(params)
    ):
        raise CodecError(f"{where}: metadata 'order' does not list exactly the decoded arrays")
    return {name: params[name] for name in order}


def get_int(entry: Mapping[str, Any], key: str, where: str, *, minimum: int = 0) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CodecError(f"{where}: metadata {key!r} must be an integer >= {minimum}")
    return value


def get_array(
    params: Params, name: str, dtype: np.dtype[Any] | type, where: str
) -> np.ndarray:
    array = params.get(name)
    if array is None or array.ndim != 1 or array.dtype != np.dtype(dtype):
        raise CodecError(f"{where}: expected a 1-D {np.dtype(dtype)} array {name!r}")
    return array


# ---- the global model a delta is taken against -----------------------------------------------
class ReferenceModel:
    """The last few global models seen, by round, so deltas can be taken and undone.

    Keeps copies (the sender may reuse its buffers) of at most ``keep`` rounds.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._by_round: dict[int, dict[str, np.ndarray]] = {}

    def record(self, msg: Message) -> None:
        if msg.kind is not Kind.MODEL or not msg.params:
            return
        self._by_round[msg.round] = {k: np.array(v) for k, v in msg.params.items()}
        for old in sorted(self._by_round)[: -self.keep]:
            del self._by_round[old]

    def get(self, round: int, where: str) -> dict[str, np.ndarray]:
        ref = self._by_round.get(round)
        if ref is None:
            raise CodecError(
                f"{where}: no global model for round {round} (delta mode needs the filter's "
                "'model' wire connected to the global model)"
            )
        return ref


def subtract(params: Params, ref: Params, where: str) -> dict[str, np.ndarray]:
    """``params - ref`` for floating-point arrays; other arrays pass unchanged."""
    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        value = np.asarray(value)
        if value.dtype.kind != "f":
            out[name] = value
            continue
        base = ref.get(name)
        if base is None or base.shape != value.shape:
            raise CodecError(f"{where}: parameter {name!r} does not match the global model")
        out[name] = value - base.astype(value.dtype, copy=False)
    return out


def add(params: Params, ref: Params, where: str) -> dict[str, np.ndarray]:
    """Undo :func:`subtract`: ``params + ref`` for floating-point arrays."""
    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if value.dtype.kind != "f":
            out[name] = value
            continue
        base = ref.get(name)
        if base is None or base.shape != value.shape:
            raise CodecError(f"{where}: decoded parameter {name!r} does not match the global model")
        out[name] = (value + base.astype(value.dtype, copy=False)).astype(base.dtype, copy=False)
    return out


# ---- the filters -------------------------------------------------------------------------------
class Codec(Filter):
    """A filter with a tag; ``delta=True`` adds the ``model`` wire that tracks the global model.

    CPU-heavy, so it runs off the event loop (``blocking``). ``ERROR`` messages and messages
    without params pass through untouched: there is nothing to encode, and a failed client must
    still reach the server as a failure.
    """

    blocking: ClassVar[bool] = True  # type: ignore[misc]
    tag: ClassVar[str] = "codec"

    def __init__(self, name: str, *, delta: bool = False) -> None:
        super().__init__(name)
        self.delta = delta
        self.reference = ReferenceModel()
        if delta:
            self.add_input("model", self.on_model, required=False)

    def on_model(self, msg: Message) -> None:
        self.reference.record(msg)

    @staticmethod
    def passes_through(msg: Message) -> bool:
        return msg.kind is Kind.ERROR or msg.error is not None or not msg.params


class Encoder(Codec):
    """Client half: implement :meth:`encode`; the trail gets the tag pushed.

    Subclasses declare ``pushes = (tag,)`` next to their ``tag``: the pairing checks read it.
    """

    def encode(self, msg: Message) -> Message:
        raise NotImplementedError

    def process(self, msg: Message) -> Message:
        if self.passes_through(msg):
            return msg
        if self.tag in msg.meta:
            raise CodecError(f"{self.name}: message already carries {self.tag!r} metadata")
        if self.delta:
            ref = self.reference.get(msg.round, self.name)
            msg = msg.replace(params=subtract(msg.params, ref, self.name))
        return self.encode(msg).push_trail(self.tag)


class Decoder(Codec):
    """Server half: implement :meth:`decode`; checks and pops the trail, removes the metadata.

    Subclasses declare ``pops = (tag,)`` next to their ``tag``: the pairing checks read it.
    """

    def __init__(self, name: str, *, delta: bool = False,
                 max_decoded_size: int = DEFAULT_MAX_DECODED) -> None:
        super().__init__(name, delta=delta)
        if max_decoded_size < 1:
            raise ConfigError(f"max_decoded_size must be positive, got {max_decoded_size}")
        self.max_decoded_size = max_decoded_size
        self.failures = 0

    def decode(self, msg: Message, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def process(self, msg: Message) -> Message:
        """``msg`` decoded, or a :class:`DecodeRefusal` whatever went wrong: the input is a
        peer's, so no failure of decoding it may escape as anything but a counted refusal."""
        if self.passes_through(msg) and self.tag not in msg.trail:
            return msg
        try:
            return self._decoded(msg)
        except RejectedUpdate:
            self.failures += 1
            raise
        except Exception as exc:  # CodecError, or a decoder's bug on hostile input
            self.failures += 1
            detail = str(exc) if isinstance(exc, CodecError) else (
                f"{self.name}: malformed encoded update: {type(exc).__name__}: {exc}")
            raise DecodeRefusal(BAD_ENCODING, detail) from exc

    def _decoded(self, msg: Message) -> Message:
        if not msg.trail or msg.trail[-1] != self.tag:
            last = msg.trail[-1][:64] if msg.trail else "nothing"
            raise CodecError(
                f"{self.name}: cannot decode {self.tag!r}: the last filter applied was {last!r} "
                "(decoders must run in the reverse order of the encoders)"
            )
        params = self.decode(msg, meta_entry(msg, self.tag))
        if self.delta:
            params = add(params, self.reference.get(msg.round, self.name), self.name)
        meta = {k: v for k, v in msg.meta.items() if k != self.tag}
        return msg.replace(trail=msg.trail[:-1], params=params, meta=meta)

    def float_table(
        self, entry: Mapping[str, Any], action: str
    ) -> tuple[list[tuple[str, np.dtype[Any], tuple[int, ...]]], int]:
        """The entry's array table, checked to hold only floats within the size limit, and
        the number of values it describes."""
        table = read_table(entry.get("table"), self.name)
        if any(dtype.kind != "f" for _, dtype, _ in table):
            raise CodecError(f"{self.name}: only floating-point arrays can be {action}")
        self.check_size(table_nbytes(table))
        return table, sum(math.prod(shape) for _, _, shape in table)

    def check_size(self, nbytes: int) -> None:
        if nbytes > self.max_decoded_size:
            raise CodecError(
                f"{self.name}: update would decode to {nbytes} bytes, over the limit of "
                f"{self.max_decoded_size} (max_decoded_size)"
            )
