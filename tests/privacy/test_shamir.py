"""Shamir sharing: any threshold shares recover the secret; fewer are refused."""

from __future__ import annotations

import itertools
import os

import pytest

from foedus.core.errors import ConfigError, PrivacyError
from foedus.privacy import shamir


def test_any_threshold_subset_recovers_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, range(1, 6))
    for subset in itertools.combinations(shares.items(), 3):
        assert shamir.combine(dict(subset), 3) == secret


def test_fewer_than_threshold_shares_are_refused() -> None:
    shares = shamir.split(os.urandom(32), 4, range(1, 8))
    with pytest.raises(PrivacyError, match="from 3 shares; 4 are needed"):
        shamir.combine(dict(list(shares.items())[:3]), 4)


def test_shares_round_trip_through_bytes() -> None:
    shares = shamir.split(b"\xff" * 32, 2, [1, 2])
    assert {x: shamir.share_from_bytes(shamir.share_to_bytes(y)) for x, y in shares.items()} \
        == shares


@pytest.mark.parametrize(("secret", "threshold", "xs"), [
    (b"short", 2, [1, 2]), (b"\0" * 32, 3, [1, 2]), (b"\0" * 32, 2, [1, 1]),
    (b"\0" * 32, 2, [0, 1]),
])
def test_invalid_sharing_arguments_raise(secret: bytes, threshold: int, xs: list[int]) -> None:
    with pytest.raises(ConfigError):
        shamir.split(secret, threshold, xs)
