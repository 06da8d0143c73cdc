"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Secure aggregation shares each client's masking key and self-mask seed this way, so the server
can still remove the masks of clients that drop out, as long as ``threshold`` of them answer,
while fewer than ``threshold`` shares reveal nothing about the secret. The field is the Mersenne
prime 2^521 - 1, large enough to hold any 32-byte secret as one element. Coefficients come from
:mod:`secrets` (the OS CSPRNG). Written here because the maintained option (PyCryptodome) only
shares 16-byte secrets and would add a dependency for about thirty lines of modular arithmetic.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from foedus.core.errors import ConfigError, PrivacyError

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for every x in ``xs``; any ``threshold`` recover it."""
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"secrets must be {SECRET_BYTES} bytes, got {len(secret)}")
    points = list(xs)
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ConfigError("share points must be distinct non-zero field elements")
    if not 1 <= threshold <= len(points):
        raise ConfigError(f"threshold must be between 1 and {len(points)}, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares: dict[int, int] = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def combine(shares: Mapping[int, int], threshold: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise PrivacyError(
            f"cannot reconstruct a secret from {len(shares)} shares; {threshold} are needed"
        )
    secret = interpolate(dict(sorted(shares.items())[:threshold]), 0)
    if secret >= 1 << (8 * SECRET_BYTES):
        raise PrivacyError("the shares do not interpolate to a valid secret (corrupted shares?)")
    return secret.to_bytes(SECRET_BYTES, "big")


def interpolate(points: Mapping[int, int], x: int) -> int:
    """The value at ``x`` of the lowest-degree polynomial through ``points`` (Lagrange).

    At 0 it is the secret; at another share's point it says whether that share lies on the
    same polynomial, which is how a secure sum finds the share that does not fit.
    """
    value = 0
    items = list(points.items())
    for i, (xi, yi) in enumerate(items):
        num, den = 1, 1
        for j, (xj, _) in enumerate(items):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        value = (value + yi * num * pow(den, -1, PRIME)) % PRIME
    return value


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise PrivacyError(f"a share must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise PrivacyError("a share is not a field element")
    return value
