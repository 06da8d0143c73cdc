"""A malicious participant inside a secure sum: whatever it sends, the sum is right or refused.

Each test runs a whole session of :mod:`foedus.privacy.secagg` in memory, with one client (or
two) lying at one step, and asserts the outcome a deployment relies on: the liar is named in
``SecAggServer.misbehaviour`` and the sum is still exactly the honest survivors' sum, or the
session ends with a :class:`SecAggError` saying why; never a silently wrong sum.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from foedus.privacy import shamir
from foedus.privacy.secagg import (
    AdvertiseKeys,
    MaskedInput,
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

N, DIM = 6, 50
Tamper = Callable[[int, object], object]  # (client, honest message) -> what it sends


def config() -> SecAggConfig:
    return SecAggConfig.tolerating(N, 2, DIM, value_range=2.0)  # threshold 4 of 6


def inputs(cfg: SecAggConfig) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {u: rng.uniform(-1, 1, DIM) for u in range(1, cfg.num_clients + 1)}


def session(tamper: dict[str, Tamper] | None = None) -> tuple[SecAggServer, np.ndarray | None,
                                                              dict[int, np.ndarray]]:
    """Run one session; ``tamper[step]`` rewrites each client's message at that step. Returns
    the server, the sum (None when refused) and the inputs."""
    cfg = config()
    xs = inputs(cfg)
    change = tamper or {}

    def out(step: str, u: int, message: object) -> object:
        return change[step](u, message) if step in change else message

    clients = {u: SecAggClient(cfg, u) for u in xs}
    server = SecAggServer(cfg)
    roster = server.collect_keys([out("advertise", u, c.advertise())  # type: ignore[misc]
                                  for u, c in clients.items()])
    shares = [out("shares", u, clients[u].share_keys(roster)) for u in roster.keys]
    routed = server.route_shares(shares)  # type: ignore[arg-type]
    masked = [out("masked", u, clients[u].masked_input(xs[u], routed[u])) for u in routed]
    request = server.collect_masked(masked)  # type: ignore[arg-type]
    answers = [out("unmask", u, clients[u].unmask(request)) for u in request.survivors]
    try:
        total = server.finish(answers)  # type: ignore[arg-type]
    except SecAggError as exc:
        server.refusal = str(exc)  # type: ignore[attr-defined]
        total = None
    return server, total, xs


def assert_sum_of(server: SecAggServer, total: np.ndarray | None,
                  xs: dict[int, np.ndarray]) -> None:
    """The sum is exactly (to fixed point) the inputs of the survivors the server unmasked."""
    assert server.request is not None and total is not None
    expected = sum(xs[u] for u in server.request.survivors)
    np.testing.assert_allclose(total, expected, atol=N * 2.0 ** -server.cfg.scale_bits)


def reencrypt(dealer: SecAggClient, victim: int, change: Callable[[bytes], bytes],
              shares: ShareKeys) -> ShareKeys:
    """The dealer's share to ``victim``, decrypted, changed and encrypted again properly: a
    share the victim cannot tell is wrong."""
    from foedus.privacy.secagg import _nonce

    aead = dealer._aead(victim)
    nonce, ad = _nonce(dealer.id, victim), dealer._ad(dealer.id, victim)
    plain = aead.decrypt(nonce, shares.ciphertexts[victim], ad)
    return ShareKeys(dealer.id, {**shares.ciphertexts,
                                 victim: aead.encrypt(nonce, change(plain), ad)})


def shifted(share: bytes) -> bytes:
    return shamir.share_to_bytes((shamir.share_from_bytes(share) + 1) % shamir.PRIME)


def test_an_honest_session_names_nobody() -> None:
    server, total, xs = session()
    assert_sum_of(server, total, xs)
    assert server.misbehaviour == {}


def test_a_share_returned_corrupt_at_unmasking_is_named_and_the_sum_stays_right() -> None:
    def lie(u: int, answer: object) -> object:
        assert isinstance(answer, UnmaskResponse)
        if u != 1:  # client 1's share of client 2's seed is in the first threshold shares
            return answer
        return UnmaskResponse(u, answer.s_shares,
                              {**answer.b_shares, 2: shifted(answer.b_shares[2])})

    server, total, xs = session({"unmask": lie})
    assert_sum_of(server, total, xs)
    assert list(server.misbehaviour) == [1]
    assert "share of client 2's self-mask seed" in server.misbehaviour[1]


def test_a_dealer_giving_one_client_a_wrong_share_is_found_and_the_sum_stays_right() -> None:
    cfg = config()

    class Dealer(SecAggClient):
        def share_keys(self, roster: Roster) -> ShareKeys:
            honest = super().share_keys(roster)
            if self.id != 3:
                return honest
            size = shamir.SHARE_BYTES  # the b share to client 1 is off the polynomial
            return reencrypt(self, 1, lambda p: shifted(p[:size]) + p[size:], honest)

    xs = inputs(cfg)
    clients = {u: Dealer(cfg, u) for u in xs}
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.route_shares([c.share_keys(roster) for c in clients.values()])
    request = server.collect_masked([clients[u].masked_input(xs[u], routed[u]) for u in routed])
    total = server.finish([clients[u].unmask(request) for u in request.survivors])
    assert_sum_of(server, total, xs)
    assert list(server.misbehaviour) == [1]  # its holder is named, with the dealer
    assert "or client 3 dealt it a bad one" in server.misbehaviour[1]


def test_too_many_corrupt_shares_refuse_the_sum_naming_whose_secret_failed() -> None:
    rng = np.random.default_rng(3)

    def lie(u: int, answer: object) -> object:
        assert isinstance(answer, UnmaskResponse)
        if u not in (1, 2, 3):  # three of six corrupt: no four shares of client 4's seed fit
            return answer
        junk = shamir.share_to_bytes(int(rng.integers(1, 2**62)))
        return UnmaskResponse(u, answer.s_shares, {**answer.b_shares, 4: junk})

    server, total, _ = session({"unmask": lie})
    assert total is None
    assert "client 4's self-mask seed" in server.refusal  # type: ignore[attr-defined]
    assert server.misbehaviour == {}  # client 4 dealt bad shares, or three holders lie
    assert server.unresolved == ["no 4 shares of client 4's self-mask seed rebuild it"]


def test_corruption_beyond_unique_decoding_frames_nobody() -> None:
    def lie(u: int, answer: object) -> object:
        assert isinstance(answer, UnmaskResponse)
        if u not in (1, 2):  # shifting two shares by one still interpolates the right seed
            return answer   # through an off-polynomial set: the blame would fall on honest 3
        return UnmaskResponse(u, answer.s_shares,
                              {**answer.b_shares, 4: shifted(answer.b_shares[4])})

    server, total, xs = session({"unmask": lie})
    assert_sum_of(server, total, xs)
    assert server.misbehaviour == {}
    assert "shares of client 4's self-mask seed do not fit" in server.unresolved[0]
    assert "nobody is named" in server.unresolved[0]


def test_a_masked_vector_that_is_not_input_plus_masks_refuses_the_sum() -> None:
    cfg = config()
    rng = np.random.default_rng(1)

    def lie(u: int, m: object) -> object:
        assert isinstance(m, MaskedInput)
        if u != 5:
            return m
        noise = rng.integers(0, 2**63, DIM, dtype=np.uint64)
        return MaskedInput(u, m.masked + noise.astype(cfg.dtype))

    server, total, _ = session({"masked": lie})
    assert total is None
    assert "was not its input plus its masks" in server.refusal  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [np.zeros(DIM - 1, np.uint32), np.zeros(DIM, np.float64),
                                 np.zeros((DIM, 2), np.uint32)], ids=["short", "float", "2d"])
def test_a_masked_vector_of_the_wrong_length_or_type_drops_its_sender(bad: np.ndarray) -> None:
    def lie(u: int, m: object) -> object:
        assert isinstance(m, MaskedInput)
        return MaskedInput(u, bad) if u == 2 else m

    server, total, xs = session({"masked": lie})
    assert server.request is not None and server.request.dropped == (2,)
    assert_sum_of(server, total, xs)  # the other five, their masks towards 2 removed
    assert "masked vector of shape" in server.misbehaviour[2]


def test_share_tables_missing_a_member_or_of_the_wrong_size_drop_their_senders() -> None:
    def lie(u: int, s: object) -> object:
        assert isinstance(s, ShareKeys)
        if u == 1:
            return ShareKeys(u, {v: c for v, c in s.ciphertexts.items() if v != 2})
        if u == 6:
            return ShareKeys(u, {v: c[:-3] for v, c in s.ciphertexts.items()})
        return s

    server, total, xs = session({"shares": lie})
    assert server.u2 == (2, 3, 4, 5)
    assert_sum_of(server, total, xs)
    assert set(server.misbehaviour) == {1, 6}


@pytest.mark.parametrize(("lie", "excluded"), [("copied", {2, 3}), ("short", {6})])
def test_a_copied_or_malformed_key_excludes_the_advertisers(lie: str, excluded: set[int]) -> None:
    adverts: dict[int, AdvertiseKeys] = {}

    def advertise(u: int, a: object) -> object:
        assert isinstance(a, AdvertiseKeys)
        adverts[u] = a
        if u == 3 and lie == "copied":  # client 2's mask key: who copied whom is unknowable
            return AdvertiseKeys(u, a.c_public, adverts[2].s_public, a.commitment)
        if u == 6 and lie == "short":
            return AdvertiseKeys(u, a.c_public[:5], a.s_public, a.commitment)
        return a

    server, total, xs = session({"advertise": advertise})
    assert sorted(server.roster) == sorted(set(range(1, N + 1)) - excluded)
    assert_sum_of(server, total, xs)
    assert set(server.misbehaviour) == excluded


def test_a_share_that_does_not_decrypt_is_reported_and_the_sum_stays_right() -> None:
    def lie(u: int, s: object) -> object:
        assert isinstance(s, ShareKeys)
        if u != 4:
            return s
        ct = s.ciphertexts[1]
        return ShareKeys(u, {**s.ciphertexts, 1: ct[:-1] + bytes([ct[-1] ^ 1])})

    server, total, xs = session({"shares": lie})
    assert_sum_of(server, total, xs)  # client 1 stays in, without a share of 4's secrets
    assert server.misbehaviour == {4: "client 1 reports its share failed to decrypt"}


def test_a_returned_share_that_is_not_a_field_element_is_named() -> None:
    def lie(u: int, answer: object) -> object:
        assert isinstance(answer, UnmaskResponse)
        if u != 6:
            return answer
        return UnmaskResponse(u, answer.s_shares, {**answer.b_shares, 1: b"\xff" * 66})

    server, total, xs = session({"unmask": lie})
    assert_sum_of(server, total, xs)
    assert "malformed share of client 1" in server.misbehaviour[6]


def test_an_unmask_request_is_still_checked_by_every_client() -> None:
    cfg = config()
    client = SecAggClient(cfg, 1)
    client.advertise()
    with pytest.raises(SecAggError, match="out of order"):
        client.unmask(UnmaskRequest((1,), ()))
