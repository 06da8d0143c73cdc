"""Secure sum: exact up to fixed-point precision, survives up to n - t dropouts, refuses more,
and a single masked update looks uniformly random."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.errors import ConfigError
from foedus.privacy.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    UnmaskRequest,
    simulate,
)

N, DIM = 10, 2_000


def vectors(cfg: SecAggConfig, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.uniform(-cfg.value_range, cfg.value_range, cfg.vector_size)
            for u in range(1, cfg.num_clients + 1)}


def plain_sum(xs: dict[int, np.ndarray], without: set[int] = frozenset()) -> np.ndarray:  # type: ignore[assignment]
    return sum(v for u, v in xs.items() if u not in without)  # type: ignore[return-value]


def tolerance(cfg: SecAggConfig) -> float:
    return float(cfg.num_clients * 0.5 / 2**cfg.scale_bits)  # each value rounds by half a step


@pytest.fixture
def cfg() -> SecAggConfig:
    return SecAggConfig.tolerating(N, 3, DIM, value_range=2.0)


def test_sum_with_no_dropouts_equals_the_plain_sum(cfg: SecAggConfig) -> None:
    xs = vectors(cfg)
    assert np.abs(simulate(cfg, xs) - plain_sum(xs)).max() <= tolerance(cfg)


def test_three_of_ten_dropping_after_sharing_keys_still_sum_the_survivors(
    cfg: SecAggConfig,
) -> None:
    xs = vectors(cfg, 1)
    gone = {2, 5, 9}
    result = simulate(cfg, xs, drop_before_masking=gone)
    assert np.abs(result - plain_sum(xs, gone)).max() <= tolerance(cfg)


def test_clients_dropping_after_masking_are_still_in_the_sum(cfg: SecAggConfig) -> None:
    xs = vectors(cfg, 2)
    result = simulate(cfg, xs, drop_before_masking={1}, drop_before_unmasking={4, 10})
    assert np.abs(result - plain_sum(xs, {1})).max() <= tolerance(cfg)


@pytest.mark.parametrize(("before_masking", "before_unmasking", "match"), [
    ({1, 2, 3, 4}, set(), "only 6 masked inputs, the threshold is 7"),
    ({1, 2}, {3, 4}, "6 of the 7 unmasking answers"),
])
def test_more_than_the_tolerated_dropouts_fail_clearly(
    cfg: SecAggConfig, before_masking: set[int], before_unmasking: set[int], match: str
) -> None:
    with pytest.raises(SecAggError, match=match):
        simulate(cfg, vectors(cfg), drop_before_masking=before_masking,
                 drop_before_unmasking=before_unmasking)


def test_64_bit_ring_gives_higher_precision() -> None:
    cfg = SecAggConfig(5, 3, 500, value_range=100.0, scale_bits=32, ring_bits=64)
    xs = vectors(cfg, 3)
    assert np.abs(simulate(cfg, xs, drop_before_masking={3}) - plain_sum(xs, {3})).max() < 1e-8


def run_to_masking(cfg: SecAggConfig, xs: dict[int, np.ndarray]) -> tuple[
    dict[int, SecAggClient], SecAggServer, dict[int, np.ndarray], UnmaskRequest
]:
    clients = {u: SecAggClient(cfg, u) for u in xs}
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.route_shares([c.share_keys(roster) for c in clients.values()])
    masked = {u: clients[u].masked_input(xs[u], routed[u]) for u in routed}
    request = server.collect_masked(list(masked.values()))
    return clients, server, {u: m.masked for u, m in masked.items()}, request


def test_a_single_masked_update_is_uniform_and_uncorrelated_with_its_input() -> None:
    cfg = SecAggConfig(3, 2, 200_000, value_range=1.0)
    xs = {u: np.full(cfg.vector_size, 0.9) if u == 1 else np.zeros(cfg.vector_size)
          for u in (1, 2, 3)}
    xs[1][::2] = -0.9  # a structured input: alternating +-0.9
    _, _, masked, _ = run_to_masking(cfg, xs)
    y = masked[1]
    # uniform over the ring: each of the 16 top-4-bit buckets holds 1/16 of the values
    counts = np.bincount((y >> 28).astype(np.int64), minlength=16)
    expected = cfg.vector_size / 16
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected))
    # uncorrelated with the input it hides
    r = np.corrcoef(y.astype(np.float64), xs[1])[0, 1]
    assert abs(r) < 6 / np.sqrt(cfg.vector_size)
    # and the plain encoding of the input is nowhere in it
    assert np.mean(y == cfg.encode(xs[1])) < 1e-3


def test_client_refuses_to_reveal_shares_when_the_server_lists_a_client_twice() -> None:
    cfg = SecAggConfig.tolerating(5, 1, 10)
    clients, _, _, request = run_to_masking(cfg, vectors(cfg))
    lying = UnmaskRequest(request.survivors, request.survivors[:1])
    with pytest.raises(SecAggError, match="refusing to reveal shares"):
        clients[2].unmask(lying)


def test_a_tampered_share_is_detected() -> None:
    cfg = SecAggConfig.tolerating(4, 1, 10)
    clients = {u: SecAggClient(cfg, u) for u in range(1, 5)}
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise() for c in clients.values()])
    shares = [c.share_keys(roster) for c in clients.values()]
    bad = shares[0].ciphertexts[2]
    shares[0] = ShareKeys(1, {**shares[0].ciphertexts, 2: bad[:-1] + bytes([bad[-1] ^ 1])})
    routed = server.route_shares(shares)
    masked = clients[2].masked_input(np.zeros(10), routed[2])  # reported, not a reason to leave
    assert masked.complaints == {1: "its share failed to decrypt"}


def test_out_of_range_values_are_refused_before_masking(cfg: SecAggConfig) -> None:
    with pytest.raises(SecAggError, match="exceeds value_range"):
        cfg.encode(np.full(DIM, 3.0))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_clients": 10, "threshold": 5, "vector_size": 4}, "more than half"),
    ({"num_clients": 10, "threshold": 11, "vector_size": 4}, "more than half"),
    ({"num_clients": 1, "threshold": 1, "vector_size": 4}, "at least 2 clients"),
    ({"num_clients": 10, "threshold": 7, "vector_size": 4, "value_range": 1e6}, "overflow"),
    ({"num_clients": 10, "threshold": 7, "vector_size": 4, "ring_bits": 16}, "ring_bits"),
])
def test_invalid_configurations_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SecAggConfig(**kwargs)  # type: ignore[arg-type]
