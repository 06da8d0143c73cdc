"""QSGD: unbiased stochastic quantisation (Alistarh et al., NeurIPS 2017).

The floating-point parameters are laid end to end and cut into buckets of ``bucket`` values.
Each bucket ``v`` is sent as its norm ``||v||`` (one float32) and, per value, a sign and a level
``l`` in ``{0, ..., s}``; the receiver rebuilds ``||v|| * sign * l / s``. The level is rounded up
or down at random with the probability that makes the result unbiased: ``E[Q(v)] = v``. With the
paper's L2 norm the variance obeys Lemma 3.1, ``E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2``
for a bucket of ``d`` values; ``norm: max`` (scale by the largest magnitude, as most practical
implementations do) gives far lower error at 2-4 bits, ``<= d * max|v|^2 / (4 s^2)``.

With ``bits`` bits a value, ``s = 2**(bits-1) - 1`` levels and the code ``s + sign * l`` fits in
``bits`` bits, packed densely (4 bits = half a byte). ``elias: true`` instead sends levels with
Elias-gamma codes and one sign bit per non-zero level, which is smaller when most levels are 0.

Quantisation error on full weights is large relative to what a round changes, so ``delta: true``
(the default) quantises the change from the round's global model instead (see
:mod:`foedus.compress.base`). Non-float parameters (integer buffers) pass through unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from foedus.compress import bits as bitpack
from foedus.compress.base import (
    DEFAULT_MAX_DECODED,
    Decoder,
    Encoder,
    check_flag,
    check_stage_size,
    flat_float32,
    get_array,
    get_int,
    make_table,
    reorder,
    split_float,
    unflat,
)
from foedus.core.errors import CodecError, ConfigError
from foedus.core.filter import LOSSY, Filter, Half, Stage, stages
from foedus.core.message import Message

CODES, NORMS, SIGNS = "qsgd.codes", "qsgd.norms", "qsgd.signs"
NORM_KINDS = ("l2", "max")


def levels_for(bits: int) -> int:
    """Levels per sign that a ``bits``-bit code can hold: 1 at 2 bits, 7 at 4, 127 at 8."""
    return int(2 ** (bits - 1) - 1)


def quantize(
    vector: np.ndarray, *, levels: int, bucket: int, norm: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastically quantise ``vector``; returns (signed levels int16, bucket norms float32).

    Vectorised over all values: one random draw per value, no Python loop.
    """
    n = vector.size
    buckets = -(-n // bucket)
    padded = np.zeros(buckets * bucket, dtype=np.float32)
    padded[:n] = vector
    rows = padded.reshape(buckets, bucket)
    magnitude = np.abs(rows)
    if norm == "l2":
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64)).astype(np.float32)
    else:
        norms = magnitude.max(axis=1)
    # scale with the float32 norm the receiver will see, so the estimate stays unbiased
    safe = np.where(norms > 0, norms, np.float32(1)).astype(np.float32)
    scaled = magnitude / safe[:, None] * np.float32(levels)
    lower = np.floor(scaled)
    up = rng.random(scaled.shape, dtype=np.float32) < (scaled - lower)
    level = np.minimum(lower + up, levels).astype(np.int16)
    signed = np.where(rows < 0, -level, level)
    return signed.ravel()[:n], norms


def dequantize(
    signed: np.ndarray, norms: np.ndarray, *, levels: int, bucket: int
) -> np.ndarray:
    """``norm * level / s`` per value, as float32."""
    n = signed.size
    scale = np.repeat(norms / np.float32(levels), bucket)[:n]
    return signed.astype(np.float32) * scale


class QSGDEncoder(Encoder):
    tag: ClassVar[str] = "qsgd"
    pushes = (tag,)

    def __init__(
        self, *, bits: int = 4, bucket: int = 512, norm: str = "max", elias: bool = False,
        delta: bool = True, seed: int | Sequence[int] | None = None,
        name: str = "qsgd-encode",
    ) -> None:
        super().__init__(name, delta=delta)
        _check(bits, bucket, norm)
        self.bits, self.bucket, self.norm, self.elias = bits, bucket, norm, elias
        self.levels = levels_for(bits)
        self.rng = np.random.default_rng(seed)

    def encode(self, msg: Message) -> Message:
        floats, rest = split_float(msg.params)
        clash = {CODES, NORMS, SIGNS} & set(rest)
        if clash:
            raise CodecError(f"{self.name}: parameter name {sorted(clash)[0]!r} is reserved")
        signed, norms = quantize(
            flat_float32(floats), levels=self.levels, bucket=self.bucket, norm=self.norm,
            rng=self.rng,
        )
        entry: dict[str, Any] = {
            "table": make_table(floats), "bits": self.bits, "bucket": self.bucket,
            "elias": self.elias, "order": list(msg.params),
        }
        if self.elias:
            magnitude = np.abs(signed)
            codes, nbits = bitpack.gamma_encode(magnitude.astype(np.uint64) + 1)
            signs = np.packbits(signed[magnitude > 0] < 0)
            entry.update(nbits=nbits, nonzero=int(np.count_nonzero(magnitude)))
            out = {**rest, CODES: codes, NORMS: norms, SIGNS: signs}
        else:
            codes = bitpack.pack((signed + self.levels).astype(np.uint8), self.bits)
            out = {**rest, CODES: codes, NORMS: norms}
        return msg.replace(params=out, meta={**msg.meta, self.tag: entry})


class QSGDDecoder(Decoder):
    tag: ClassVar[str] = "qsgd"
    pops = (tag,)

    def __init__(self, *, delta: bool = True, max_decoded_size: int = DEFAULT_MAX_DECODED,
                 name: str = "qsgd-decode") -> None:
        super().__init__(name, delta=delta, max_decoded_size=max_decoded_size)

    def decode(self, msg: Message, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        where = self.name
        table, n = self.float_table(entry, "quantised")
        bits = get_int(entry, "bits", where, minimum=2)
        bucket = get_int(entry, "bucket", where, minimum=1)
        if bits > 8:
            raise CodecError(f"{where}: bits must be 2-8, got {bits}")
        levels = levels_for(bits)
        norms = get_array(msg.params, NORMS, np.float32, where)
        if len(norms) != -(-n // bucket):
            raise CodecError(f"{where}: {len(norms)} bucket norms for {n} values in buckets "
                             f"of {bucket}")
        if not np.isfinite(norms).all() or (norms < 0).any():
            raise CodecError(f"{where}: bucket norms must be finite and non-negative")
        codes = get_array(msg.params, CODES, np.uint8, where)
        if entry.get("elias") is True:
            nbits = get_int(entry, "nbits", where)
            nonzero = get_int(entry, "nonzero", where)
            magnitude = bitpack.gamma_decode(codes, nbits, n).astype(np.int64) - 1
            if n and int(magnitude.max()) > levels:
                raise CodecError(f"{where}: a level exceeds s={levels}")
            if int(np.count_nonzero(magnitude)) != nonzero:
                raise CodecError(f"{where}: non-zero count does not match the metadata")
            sign_bits = get_array(msg.params, SIGNS, np.uint8, where)
            if len(sign_bits) != -(-nonzero // 8):
                raise CodecError(f"{where}: sign bits do not match the non-zero count")
            negative = np.unpackbits(sign_bits)[:nonzero].astype(bool)
            signed = magnitude.astype(np.int16)
            signed[signed > 0] *= np.where(negative, -1, 1).astype(np.int16)
        elif entry.get("elias") is False:
            raw = bitpack.unpack(codes, bits, n)
            if n and int(raw.max()) > 2 * levels:
                raise CodecError(f"{where}: code {int(raw.max())} is outside 0..{2 * levels}")
            signed = raw.astype(np.int16) - levels
        else:
            raise CodecError(f"{where}: metadata 'elias' must be true or false")
        floats = unflat(dequantize(signed, norms, levels=levels, bucket=bucket), table)
        rest = {k: v for k, v in msg.params.items() if k not in (CODES, NORMS, SIGNS)}
        if set(rest) & set(floats):
            raise CodecError(f"{where}: a parameter is both quantised and passed through")
        return reorder({**floats, **rest}, entry, where)


class QSGDStage(Stage):
    """``- {type: qsgd, params: {bits: 4, bucket: 512, norm: max, elias: false, delta: true}}``"""

    privacy_operations = (LOSSY,)

    def __init__(
        self, bits: int = 4, bucket: int = 512, norm: str = "max", elias: bool = False,
        delta: bool = True, seed: int | None = None,
        max_decoded_size: int = DEFAULT_MAX_DECODED,
    ) -> None:
        _check(bits, bucket, norm)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or seed < 0):
            raise ConfigError(f"qsgd seed must be an integer >= 0, got {seed!r}")
        self.bits, self.bucket, self.norm = bits, bucket, norm
        self.elias = check_flag("qsgd", "elias", elias)
        self.delta, self.seed = check_flag("qsgd", "delta", delta), seed
        self.max_decoded_size = check_stage_size("qsgd", max_decoded_size)
        self._clients = itertools.count()

    def client(self) -> Filter:
        # every client gets its own random stream: correlated rounding would not average out
        index = next(self._clients)
        return QSGDEncoder(
            bits=self.bits, bucket=self.bucket, norm=self.norm, elias=self.elias,
            delta=self.delta, seed=None if self.seed is None else (self.seed, index),
        )

    def server(self) -> Filter:
        return QSGDDecoder(delta=self.delta, max_decoded_size=self.max_decoded_size)

    def halves(self) -> tuple[Half, Half]:
        """From the classes: building a client half would advance the per-client seeds."""
        return (Half("qsgd-encode", pushes=QSGDEncoder.pushes),
                Half("qsgd-decode", pops=QSGDDecoder.pops))


def _check(bits: int, bucket: int, norm: str) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ConfigError(f"qsgd bits must be an integer 2-8, got {bits!r}")
    if not isinstance(bucket, int) or isinstance(bucket, bool) or bucket < 1:
        raise ConfigError(f"qsgd bucket must be a positive integer, got {bucket!r}")
    if norm not in NORM_KINDS:
        raise ConfigError(f"qsgd norm must be one of {', '.join(NORM_KINDS)}, got {norm!r}")


stages.register("qsgd")(QSGDStage)
