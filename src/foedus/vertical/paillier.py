"""Additively homomorphic arithmetic for the vertical protocol: phe's Paillier keys on
fixed-point numbers, and ciphertexts as fixed-width byte arrays on the wire.

Paillier (``phe``, the ``vertical`` extra) encrypts integers modulo ``n``; multiplying two
ciphertexts adds their plaintexts, raising one to an integer power multiplies its plaintext.
Reals become integers at a fixed point (``value * 2**fraction_bits``, negatives as ``n - |v|``),
so a feature party can turn encrypted residuals ``E(r_i)`` and its own columns into the
encrypted gradient ``E(sum_i x_ij r_i) = prod_i E(r_i) ** x_ij`` without seeing one residual.

Keys, encryption (with fresh randomness) and decryption are phe's; the homomorphic sums and
products on raw ciphertexts use phe's ``powmod``/``mulmod``/``invert`` (GMP when gmpy2 is
installed). A ciphertext travels as ``bytes(n**2)`` big-endian bytes, a row of a ``uint8``
matrix (the codec's zero-copy arrays), never as Python objects in ``meta``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from foedus.core.errors import require

REQUIRES_EXTRA = "vertical"
#: the least modulus a feature party accepts from a label party (weaker keys are refused)
MIN_KEY_BITS = 1024


def _phe() -> Any:
    return require("phe", "vertical")


def width(modulus: int) -> int:
    """Bytes of a number below ``modulus``, as it travels."""
    return (modulus.bit_length() + 7) // 8


def to_bytes(values: Sequence[int], modulus: int) -> np.ndarray:
    """Integers below ``modulus`` as a ``(len, width)`` uint8 matrix (big-endian rows)."""
    w = width(modulus)
    data = b"".join(int(v).to_bytes(w, "big") for v in values)
    return np.frombuffer(data, np.uint8).reshape(len(values), w)


def from_bytes(rows: np.ndarray, modulus: int, count: int) -> list[int]:
    """The integers of a matrix made by :func:`to_bytes`; :class:`ValueError` for a matrix of
    another shape or a value not below ``modulus`` (what a hostile peer could send)."""
    w = width(modulus)
    if rows.dtype != np.uint8 or rows.shape != (count, w):
        raise ValueError(f"expected ({count}, {w}) uint8, got {rows.dtype} {rows.shape}")
    values = [int.from_bytes(bytes(r), "big") for r in rows]
    if any(v >= modulus for v in values):
        raise ValueError("a value is not below the modulus")
    return values


class FixedPoint:
    """Reals as integers modulo ``n`` with ``bits`` fractional bits (two's-complement-like:
    negatives wrap to ``n - |v|``)."""

    def __init__(self, modulus: int, bits: int) -> None:
        self.n, self.bits = modulus, bits

    def encode(self, values: np.ndarray) -> list[int]:
        scaled = np.rint(np.asarray(values, np.float64).ravel() * 2.0 ** self.bits)
        return [int(v) % self.n for v in scaled]

    def decode(self, values: Sequence[int], bits: int) -> np.ndarray:
        """Signed reals of values with ``bits`` fractional bits (a product has twice ``bits``)."""
        half = self.n // 2
        return np.asarray([(v - self.n if v > half else v) / (1 << bits) for v in values],
                          np.float64)


class PublicKey:
    """What a feature party holds: encrypt, and sum products with plaintext integers."""

    def __init__(self, n: int) -> None:
        if n.bit_length() < MIN_KEY_BITS or n % 2 == 0:
            raise ValueError(f"a Paillier modulus must be odd and at least {MIN_KEY_BITS} bits, "
                             f"got {n.bit_length()} bits")
        self.key = _phe().PaillierPublicKey(n)
        self.n: int = n
        self.nsquare: int = self.key.nsquare

    def encrypt(self, plaintexts: Sequence[int]) -> list[int]:
        """Fresh encryptions (phe draws new randomness for each)."""
        return [int(self.key.raw_encrypt(int(p))) for p in plaintexts]

    def random_mask(self, count: int) -> list[int]:
        """Uniform values modulo ``n``: added to a plaintext, they hide it completely."""
        return [secrets.randbelow(self.n) for _ in range(count)]

    def dot(self, ciphertexts: Sequence[int], outputs: int, x: np.ndarray) -> list[int]:
        """``E(X^T R)`` from ``E(R)`` (``(rows, outputs)`` flattened row-major) and the
        integer matrix ``x`` ``(rows, d)``: ``d * outputs`` ciphertexts, row-major."""
        util = _phe().util
        n2 = self.nsquare
        d = x.shape[1]
        inverses: dict[int, int] = {}

        def inverse(i: int) -> int:
            if i not in inverses:
                inverses[i] = int(util.invert(ciphertexts[i], n2))
            return inverses[i]

        out: list[int] = []
        for j in range(d):
            column = [int(v) for v in x[:, j]]
            for k in range(outputs):
                acc = 1
                for i, e in enumerate(column):
                    if e == 0:
                        continue
                    c = ciphertexts[i * outputs + k] if e > 0 else inverse(i * outputs + k)
                    acc = int(util.mulmod(acc, util.powmod(c, abs(e), n2), n2))
                out.append(acc)
        return out

    def add(self, ciphertexts: Sequence[int], fresh: Sequence[int]) -> list[int]:
        """Pairwise sums of two lists of ciphertexts."""
        util = _phe().util
        return [int(util.mulmod(a, b, self.nsquare)) for a, b in zip(ciphertexts, fresh,
                                                                     strict=True)]


class KeyPair:
    """What the label party holds: a fresh key pair per run (phe's key generation)."""

    def __init__(self, bits: int) -> None:
        public, self.private = _phe().generate_paillier_keypair(n_length=bits)
        self.public = PublicKey(int(public.n))

    def decrypt(self, ciphertexts: Sequence[int]) -> list[int]:
        return [int(self.private.raw_decrypt(int(c))) for c in ciphertexts]
