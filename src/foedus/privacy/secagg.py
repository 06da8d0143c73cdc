"""Secure-sum aggregation that survives dropouts (Bonawitz et al., CCS 2017, semi-honest server).

The server learns the sum of the clients' vectors and nothing about any single one. The protocol
is a pure in-memory library: :class:`SecAggClient` and :class:`SecAggServer` exchange plain
message objects (bytes and numpy arrays), so any transport that carries bytes can carry them,
store-and-forward ones included. Four steps, each a request/response through the server:

0. **advertise keys** — each client makes two X25519 key pairs: ``c`` (encrypting shares to one
   another through the server) and ``s`` (agreeing pairwise masks). Server: the roster ``U1``.
1. **share keys** — each client draws a self-mask seed ``b_u``, Shamir-shares ``b_u`` and its
   masking private key ``s_u`` among ``U1`` with threshold ``t``, and sends each share to its
   owner encrypted with AES-GCM under a key from ECDH(c keys) + HKDF. Senders form ``U2``.
2. **masked input** — ``y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} +-PRG(s_uv)  (mod 2^k)``,
   ``s_uv`` from ECDH(s keys) + HKDF, ``+`` if ``u < v`` else ``-``. Pairwise masks cancel in
   the sum. Senders form ``U3``; clients of ``U2`` that did not send have *dropped out*.
3. **unmask** — each survivor returns, for every dropped client, its share of ``s_u`` (so the
   server can recompute and remove that client's pairwise masks) and, for every survivor, its
   share of ``b_u`` (so the server can remove self masks). A client never reveals both for the
   same peer. With at least ``t`` answers the server gets ``sum_{u in U3} x_u``.

Fewer than ``t`` clients at any step ends the round with :class:`SecAggError`, never a wrong sum.
``t > n / 2`` is enforced, so even a server that lies about who dropped cannot collect both kinds
of shares of an honest client. Values are fixed-point numbers in the ring ``Z_{2^k}`` (k = 32 or
64). The PRG is AES-256 in counter mode over a 32-byte HKDF-derived key: numpy's PCG64 is fast
but not a cryptographic generator, and AES-CTR with AES-NI is about as fast.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foedus.core.errors import ConfigError, PrivacyError, require
from foedus.privacy import shamir


class SecAggError(PrivacyError):
    """The secure sum cannot be completed (too few clients, or a protocol violation)."""


# ---- configuration and fixed-point encoding --------------------------------------------------
@dataclass(frozen=True)
class SecAggConfig:
    """Settings every party of one secure-sum session must share.

    ``threshold`` shares are needed to reconstruct a secret, so the sum survives up to
    ``num_clients - threshold`` dropouts. ``value_range`` bounds each coordinate's absolute value;
    with ``scale_bits`` of fraction and ``num_clients`` summands it must fit the ring without
    wrapping, which is checked here. ``session`` binds keys and masks to one round.
    """

    num_clients: int
    threshold: int
    vector_size: int
    value_range: float = 1.0
    scale_bits: int = 16
    ring_bits: int = 32
    session: bytes = b"foedus-secagg"

    def __post_init__(self) -> None:
        if self.num_clients < 2:
            raise ConfigError(f"secure sum needs at least 2 clients, got {self.num_clients}")
        if not self.num_clients // 2 < self.threshold <= self.num_clients:
            raise ConfigError(
                f"threshold must be more than half of num_clients={self.num_clients} and at most "
                f"num_clients (got {self.threshold}); it tolerates num_clients - threshold "
                "dropouts"
            )
        if self.vector_size < 1:
            raise ConfigError(f"vector_size must be at least 1, got {self.vector_size}")
        if self.ring_bits not in (32, 64):
            raise ConfigError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not (self.value_range > 0 and math.isfinite(self.value_range)):
            raise ConfigError(f"value_range must be positive, got {self.value_range}")
        if not 0 <= self.scale_bits < self.ring_bits:
            raise ConfigError(f"scale_bits must be in [0, {self.ring_bits}), got "
                              f"{self.scale_bits}")
        largest = self.num_clients * self.value_range * 2.0**self.scale_bits
        if largest >= 2.0 ** (self.ring_bits - 1):
            raise ConfigError(
                f"{self.num_clients} values of magnitude {self.value_range} with "
                f"scale_bits={self.scale_bits} overflow a {self.ring_bits}-bit ring; lower "
                "scale_bits or value_range, or use ring_bits=64"
            )

    @classmethod
    def tolerating(cls, num_clients: int, max_dropouts: int, vector_size: int,
                   **options: object) -> SecAggConfig:
        """A config that survives ``max_dropouts`` dropouts (threshold = n - max_dropouts)."""
        return cls(num_clients, num_clients - max_dropouts, vector_size, **options)  # type: ignore[arg-type]

    @property
    def max_dropouts(self) -> int:
        return self.num_clients - self.threshold

    @property
    def dtype(self) -> type[np.unsignedinteger]:  # type: ignore[type-arg]
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Floats -> ring elements (two's complement fixed point); out-of-range values raise."""
        x = np.asarray(x, dtype=np.float64).ravel()
        if x.shape != (self.vector_size,):
            raise SecAggError(f"expected a vector of {self.vector_size} values, got {x.shape}")
        if not np.isfinite(x).all():
            raise SecAggError("the vector contains NaN or Inf")
        if np.abs(x).max(initial=0.0) > self.value_range:
            raise SecAggError(
                f"a value exceeds value_range={self.value_range}; clip before secure summing"
            )
        fixed = np.rint(x * 2.0**self.scale_bits).astype(np.int64)
        return fixed.astype(self.dtype) if self.ring_bits == 32 else fixed.view(np.uint64)

    def decode(self, ring: np.ndarray) -> np.ndarray:
        signed = ring.view(np.int32 if self.ring_bits == 32 else np.int64)
        return signed.astype(np.float64) / 2.0**self.scale_bits


def prg(seed: bytes, cfg: SecAggConfig) -> np.ndarray:
    """A pseudorandom ring vector from a 32-byte seed (AES-256-CTR keystream)."""
    require("cryptography", "privacy")
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    nbytes = cfg.vector_size * cfg.ring_bits // 8
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    stream = encryptor.update(bytes(nbytes)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=cfg.dtype)


def _hkdf(secret: bytes, cfg: SecAggConfig, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"foedus-secagg/" + label + b"/" + cfg.session).derive(secret)


# ---- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdvertiseKeys:
    client: int
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class Roster:
    """U1: every advertised key, by client id."""

    keys: dict[int, tuple[bytes, bytes]]


@dataclass(frozen=True)
class ShareKeys:
    client: int
    ciphertexts: dict[int, bytes]  # recipient -> encrypted (b share, s share)


@dataclass(frozen=True)
class MaskedInput:
    client: int
    masked: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    survivors: tuple[int, ...]  # U3
    dropped: tuple[int, ...]  # U2 \ U3


@dataclass(frozen=True)
class UnmaskResponse:
    client: int
    s_shares: dict[int, bytes] = field(default_factory=dict)  # of dropped clients' mask keys
    b_shares: dict[int, bytes] = field(default_factory=dict)  # of survivors' self-mask seeds


# ---- the client -------------------------------------------------------------------------------
class SecAggClient:
    """One client's side of a session. Ids are 1..num_clients (they are Shamir x-coordinates)."""

    def __init__(self, cfg: SecAggConfig, client_id: int) -> None:
        require("cryptography", "privacy")
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not 1 <= client_id <= cfg.num_clients:
            raise ConfigError(f"client_id must be in 1..{cfg.num_clients}, got {client_id}")
        self.cfg = cfg
        self.id = client_id
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._b_seed = os.urandom(32)
        self._roster: dict[int, tuple[bytes, bytes]] = {}
        self._u2: tuple[int, ...] = ()
        self._held_b: dict[int, int] = {}  # shares I hold of others' self-mask seeds
        self._held_s: dict[int, int] = {}  # shares I hold of others' mask keys
        self._step = 0

    def _advance(self, expected: int, name: str) -> None:
        if self._step != expected:
            raise SecAggError(f"client {self.id}: {name} called out of order (step {self._step})")
        self._step += 1

    def advertise(self) -> AdvertiseKeys:
        self._advance(0, "advertise")
        return AdvertiseKeys(self.id, _raw_public(self._c_key), _raw_public(self._s_key))

    def share_keys(self, roster: Roster) -> ShareKeys:
        self._advance(1, "share_keys")
        if self.id not in roster.keys or roster.keys[self.id] != (
            _raw_public(self._c_key), _raw_public(self._s_key)
        ):
            raise SecAggError(f"client {self.id}: the roster does not carry my own keys")
        _check_quorum(len(roster.keys), self.cfg, "advertised keys")
        if len({k for pair in roster.keys.values() for k in pair}) != 2 * len(roster.keys):
            raise SecAggError("the roster repeats a public key")
        self._roster = dict(roster.keys)
        members = sorted(self._roster)
        b_shares = shamir.split(self._b_seed, self.cfg.threshold, members)
        s_shares = shamir.split(_raw_private(self._s_key), self.cfg.threshold, members)
        ciphertexts: dict[int, bytes] = {}
        for v in members:
            plain = (shamir.share_to_bytes(b_shares[v]) + shamir.share_to_bytes(s_shares[v]))
            if v == self.id:
                self._held_b[v], self._held_s[v] = b_shares[v], s_shares[v]
                continue
            ciphertexts[v] = self._aead(v).encrypt(_nonce(self.id, v), plain, self._ad(self.id, v))
        return ShareKeys(self.id, ciphertexts)

    def masked_input(self, x: np.ndarray, delivered: dict[int, bytes]) -> MaskedInput:
        """Mask ``x``; ``delivered`` holds the shares other clients sent me (their ids = U2)."""
        self._advance(2, "masked_input")
        encoded = self.cfg.encode(x)  # before any state changes: bad input aborts cleanly
        for u, ciphertext in delivered.items():
            if u not in self._roster or u == self.id:
                raise SecAggError(f"client {self.id}: a share came from unknown client {u}")
            try:
                plain = self._aead(u).decrypt(_nonce(u, self.id), ciphertext, self._ad(u, self.id))
            except Exception as exc:
                raise SecAggError(f"client {self.id}: share from {u} failed to decrypt") from exc
            size = shamir.SHARE_BYTES
            self._held_b[u] = shamir.share_from_bytes(plain[:size])
            self._held_s[u] = shamir.share_from_bytes(plain[size:])
        self._u2 = tuple(sorted({*delivered, self.id}))
        _check_quorum(len(self._u2), self.cfg, "clients that shared keys")
        masked = encoded + prg(self._b_seed, self.cfg)  # uint arithmetic wraps mod 2^k
        for v in self._u2:
            if v == self.id:
                continue
            mask = prg(self._pair_seed(v), self.cfg)
            masked = masked + mask if self.id < v else masked - mask
        return MaskedInput(self.id, masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        self._advance(3, "unmask")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped or (survivors | dropped) != set(self._u2):
            raise SecAggError(
                f"client {self.id}: survivors and dropped must split the clients that shared "
                "keys; refusing to reveal shares"
            )
        if self.id not in survivors:
            raise SecAggError(f"client {self.id}: the server lists me as dropped")
        _check_quorum(len(survivors), self.cfg, "surviving clients")
        return UnmaskResponse(
            self.id,
            s_shares={u: shamir.share_to_bytes(self._held_s[u]) for u in sorted(dropped)},
            b_shares={u: shamir.share_to_bytes(self._held_b[u]) for u in sorted(survivors)},
        )

    # ---- crypto helpers ----------------------------------------------------------------------
    def _aead(self, peer: int) -> Any:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        shared = self._c_key.exchange(X25519PublicKey.from_public_bytes(self._roster[peer][0]))
        return AESGCM(_hkdf(shared, self.cfg, b"share-encryption"))

    def _ad(self, sender: int, recipient: int) -> bytes:
        return self.cfg.session + struct.pack(">II", sender, recipient)

    def _pair_seed(self, peer: int) -> bytes:
        return pair_seed(self._s_key, self._roster[peer][1], self.cfg)


def pair_seed(private: object, peer_public: bytes, cfg: SecAggConfig) -> bytes:
    """The PRG seed two clients share, from ECDH of their mask keys."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))  # type: ignore[attr-defined]
    return _hkdf(shared, cfg, b"pairwise-mask")


# ---- the server -------------------------------------------------------------------------------
class SecAggServer:
    """The server's side: routes messages, tracks who dropped, and unmasks the sum."""

    def __init__(self, cfg: SecAggConfig) -> None:
        require("cryptography", "privacy")
        self.cfg = cfg
        self.roster: dict[int, tuple[bytes, bytes]] = {}
        self.u2: tuple[int, ...] = ()
        self.masked: dict[int, np.ndarray] = {}
        self.request: UnmaskRequest | None = None

    def collect_keys(self, adverts: list[AdvertiseKeys]) -> Roster:
        keys: dict[int, tuple[bytes, bytes]] = {}
        for a in adverts:
            if not 1 <= a.client <= self.cfg.num_clients or a.client in keys:
                raise SecAggError(f"invalid or repeated client id {a.client}")
            keys[a.client] = (a.c_public, a.s_public)
        _check_quorum(len(keys), self.cfg, "advertised keys")
        self.roster = keys
        return Roster(dict(keys))

    def route_shares(self, shares: list[ShareKeys]) -> dict[int, dict[int, bytes]]:
        """Returns, per recipient, the ciphertexts addressed to it (senders are U2)."""
        senders = {s.client for s in shares if s.client in self.roster}
        _check_quorum(len(senders), self.cfg, "clients that shared keys")
        self.u2 = tuple(sorted(senders))
        out: dict[int, dict[int, bytes]] = {v: {} for v in self.u2}
        for s in shares:
            if s.client not in senders:
                continue
            if set(s.ciphertexts) != set(self.roster) - {s.client}:
                raise SecAggError(f"client {s.client} did not send a share to every other client")
            for v, ciphertext in s.ciphertexts.items():
                if v in out:
                    out[v][s.client] = ciphertext
        return out

    def collect_masked(self, inputs: list[MaskedInput]) -> UnmaskRequest:
        self.masked = {}
        for m in inputs:
            if m.client not in self.u2 or m.client in self.masked:
                raise SecAggError(f"unexpected masked input from client {m.client}")
            if m.masked.shape != (self.cfg.vector_size,) or m.masked.dtype != self.cfg.dtype:
                raise SecAggError(f"masked input from client {m.client} has the wrong shape")
            self.masked[m.client] = m.masked
        _check_quorum(len(self.masked), self.cfg, "masked inputs")
        survivors = tuple(sorted(self.masked))
        self.request = UnmaskRequest(survivors, tuple(u for u in self.u2 if u not in self.masked))
        return self.request

    def finish(self, responses: list[UnmaskResponse]) -> np.ndarray:
        """The sum of the survivors' vectors (decoded to floats)."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if self.request is None:
            raise SecAggError("finish() called before collect_masked()")
        survivors, dropped = self.request.survivors, self.request.dropped
        answers = [r for r in responses if r.client in survivors]
        if len({r.client for r in answers}) < self.cfg.threshold:
            raise SecAggError(
                f"secure sum failed: {len(answers)} of the {self.cfg.threshold} unmasking answers "
                f"needed arrived ({len(dropped)} clients had already dropped); at most "
                f"{self.cfg.max_dropouts} dropouts can be tolerated. The round's sum is lost; no "
                "individual update was revealed"
            )
        total = np.zeros(self.cfg.vector_size, dtype=self.cfg.dtype)
        for y in self.masked.values():
            total += y
        for u in survivors:  # remove self masks
            seed = shamir.combine(_shares(answers, u, "b"), self.cfg.threshold)
            total -= prg(seed, self.cfg)
        for u in dropped:  # remove the pairwise masks survivors added towards dropped u
            key = X25519PrivateKey.from_private_bytes(
                shamir.combine(_shares(answers, u, "s"), self.cfg.threshold)
            )
            if _raw_public(key) != self.roster[u][1]:
                raise SecAggError(f"reconstructed mask key of client {u} does not match its "
                                  "advertised key (corrupted shares)")
            for v in survivors:
                mask = prg(pair_seed(key, self.roster[v][1], self.cfg), self.cfg)
                # v added +mask if v < u else -mask; undo it
                total = total - mask if v < u else total + mask
        return self.cfg.decode(total)


# ---- helpers ----------------------------------------------------------------------------------
def _shares(answers: list[UnmaskResponse], owner: int, kind: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in answers:
        table = r.b_shares if kind == "b" else r.s_shares
        if owner not in table:
            raise SecAggError(f"client {r.client} did not return its share of client {owner}")
        out[r.client] = shamir.share_from_bytes(table[owner])
    return out


def _check_quorum(count: int, cfg: SecAggConfig, what: str) -> None:
    if count < cfg.threshold:
        raise SecAggError(
            f"secure sum failed: only {count} {what}, the threshold is {cfg.threshold} "
            f"(at most {cfg.max_dropouts} of {cfg.num_clients} clients may drop out)"
        )


def _nonce(sender: int, recipient: int) -> bytes:
    # each (sender, recipient) key is used for exactly one message per session
    return struct.pack(">IIi", sender, recipient, 0)


def _raw_public(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _raw_private(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def simulate(
    cfg: SecAggConfig, vectors: dict[int, np.ndarray], *,
    drop_before_masking: AbstractSet[int] = frozenset(),
    drop_before_unmasking: AbstractSet[int] = frozenset(),
) -> np.ndarray:
    """Run a whole session in memory; clients in the drop sets vanish at that step."""
    clients = {u: SecAggClient(cfg, u) for u in vectors}
    server = SecAggServer(cfg)
    roster = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.route_shares([c.share_keys(roster) for c in clients.values()])
    request = server.collect_masked([
        clients[u].masked_input(vectors[u], routed[u])
        for u in routed if u not in drop_before_masking
    ])
    responses = [clients[u].unmask(request) for u in request.survivors
                 if u not in drop_before_unmasking]
    return server.finish(responses)
