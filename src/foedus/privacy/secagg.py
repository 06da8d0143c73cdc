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
of shares of an honest client.

**A malicious participant** (one that lies inside the protocol) is detected and named, and the
sum is either right or refused (:attr:`SecAggServer.misbehaviour`):

* a malformed message (keys that are not X25519 keys, a key another client advertised too, a
  share table that misses a member, ciphertexts or a masked vector of the wrong length or type)
  excludes its sender at that step, like a dropout;
* a share that does not decrypt is reported by its recipient (``complaints``), who goes on;
* a corrupt share (from its dealer, or returned at unmasking) is found when a secret is
  rebuilt: each client commits to its self-mask seed when it advertises its keys (a hash bound
  to the session and the client), mask keys are checked against the advertised public key, and
  when the first ``t`` shares do not rebuild the committed secret the server searches the other
  shares for ``t`` that do and names the holders of those that do not fit;
* a masked vector that is not the client's input plus its masks cannot be told from a valid one,
  but it wrecks the unmasked sum: a sum outside what the survivors' values can add up to
  (``survivors * value_range``) is refused. (A client can still lie *within* the range; that is
  poisoning, bounded by ``value_range`` and clipping, as without secure sum.)

Values are fixed-point numbers in the ring ``Z_{2^k}`` (k = 32 or 64). The PRG is AES-256 in
counter mode over a 32-byte HKDF-derived key: numpy's PCG64 is fast
but not a cryptographic generator, and AES-CTR with AES-NI is about as fast.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import struct
from collections.abc import Callable, Mapping
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
    #: the client's commitment to its self-mask seed (:func:`commit`): the server checks the
    #: seed it rebuilds at unmasking against it, so a corrupt share cannot pass unnoticed
    commitment: bytes = b""


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
    #: dealer -> why the share it sent this client was unusable (did not decrypt, wrong size)
    complaints: Mapping[int, str] = field(default_factory=dict)


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
        self._complaints: dict[int, str] = {}  # dealers whose share to me was unusable
        self._step = 0

    def _advance(self, expected: int, name: str) -> None:
        if self._step != expected:
            raise SecAggError(f"client {self.id}: {name} called out of order (step {self._step})")
        self._step += 1

    def advertise(self) -> AdvertiseKeys:
        self._advance(0, "advertise")
        return AdvertiseKeys(self.id, _raw_public(self._c_key), _raw_public(self._s_key),
                             commit(self._b_seed, self.id, self.cfg))

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
            # a dealer's unusable share is its fault, not a reason to leave: I report it, keep
            # my pairwise mask with it (the server counts it in U2), and hold none of its shares
            try:
                plain = self._aead(u).decrypt(_nonce(u, self.id), ciphertext, self._ad(u, self.id))
            except Exception:
                self._complaints[u] = "its share failed to decrypt"
                continue
            size = shamir.SHARE_BYTES
            try:
                if len(plain) != 2 * size:
                    raise PrivacyError(f"{len(plain)} bytes instead of {2 * size}")
                b_share = shamir.share_from_bytes(plain[:size])
                s_share = shamir.share_from_bytes(plain[size:])
            except PrivacyError as exc:
                self._complaints[u] = f"its share is malformed: {exc}"
                continue
            self._held_b[u], self._held_s[u] = b_share, s_share
        self._u2 = tuple(sorted({*delivered, self.id}))
        _check_quorum(len(self._u2), self.cfg, "clients that shared keys")
        masked = encoded + prg(self._b_seed, self.cfg)  # uint arithmetic wraps mod 2^k
        for v in self._u2:
            if v == self.id:
                continue
            mask = prg(self._pair_seed(v), self.cfg)
            masked = masked + mask if self.id < v else masked - mask
        return MaskedInput(self.id, masked, dict(self._complaints))

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
        return UnmaskResponse(  # a dealer whose share I could not use gets none from me
            self.id,
            s_shares={u: shamir.share_to_bytes(self._held_s[u]) for u in sorted(dropped)
                      if u in self._held_s},
            b_shares={u: shamir.share_to_bytes(self._held_b[u]) for u in sorted(survivors)
                      if u in self._held_b},
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


def commit(seed: bytes, client: int, cfg: SecAggConfig) -> bytes:
    """A client's commitment to its self-mask seed: SHA-256 over the session, the client number
    and the seed. The seed is 32 random bytes, so the hash tells the server nothing about it,
    yet a seed rebuilt from corrupt shares cannot match it."""
    return hashlib.sha256(b"foedus-secagg/commit/" + cfg.session + struct.pack(">I", client)
                          + seed).digest()


def pair_seed(private: object, peer_public: bytes, cfg: SecAggConfig) -> bytes:
    """The PRG seed two clients share, from ECDH of their mask keys."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))  # type: ignore[attr-defined]
    return _hkdf(shared, cfg, b"pairwise-mask")


# ---- the server -------------------------------------------------------------------------------
class SecAggServer:
    """The server's side: routes messages, tracks who dropped, and unmasks the sum.

    A participant that breaks the protocol is excluded at the step where it does (it counts as
    a dropout) or, where it cannot be told apart before unmasking, found then; either way it is
    named in :attr:`misbehaviour` (client number -> what it did) and the sum is never wrong.
    """

    #: how many share subsets :meth:`finish` tries per secret before it gives up on finding
    #: ``threshold`` shares that fit (each corrupt share multiplies the search)
    MAX_SUBSETS = 2000

    def __init__(self, cfg: SecAggConfig) -> None:
        require("cryptography", "privacy")
        self.cfg = cfg
        self.roster: dict[int, tuple[bytes, bytes]] = {}
        self.commitments: dict[int, bytes] = {}
        self.u2: tuple[int, ...] = ()
        self.masked: dict[int, np.ndarray] = {}
        self.request: UnmaskRequest | None = None
        self.misbehaviour: dict[int, str] = {}
        #: corruption found but not attributable to one client (the sum is still right)
        self.unresolved: list[str] = []

    def blame(self, client: int, what: str) -> None:
        """Record that ``client`` broke the protocol (the first reason is kept)."""
        self.misbehaviour.setdefault(client, what)

    def collect_keys(self, adverts: list[AdvertiseKeys]) -> Roster:
        keys: dict[int, tuple[bytes, bytes]] = {}
        for a in adverts:
            if not 1 <= a.client <= self.cfg.num_clients or a.client in keys:
                raise SecAggError(f"invalid or repeated client id {a.client}")
            if not all(isinstance(k, bytes) and len(k) == KEY_BYTES
                       for k in (a.c_public, a.s_public)) or not isinstance(a.commitment, bytes) \
                    or len(a.commitment) not in (0, KEY_BYTES):
                self.blame(a.client, f"advertised keys or a commitment that are not "
                                     f"{KEY_BYTES}-byte strings")
                continue
            keys[a.client] = (a.c_public, a.s_public)
            if a.commitment:  # without one, only the range check guards this client's seed
                self.commitments[a.client] = a.commitment
        holders: dict[bytes, list[int]] = {}
        for client, pair in keys.items():
            for key in set(pair):
                holders.setdefault(key, []).append(client)
            if pair[0] == pair[1]:
                holders.setdefault(pair[0], []).append(client)
        for clients in holders.values():  # a copied key: who copied whom is unknowable
            if len(clients) > 1:
                for client in clients:
                    self.blame(client, "advertised a public key that another client (or its "
                                       "other key) also uses")
                    keys.pop(client, None)
        _check_quorum(len(keys), self.cfg, "advertised keys")
        self.roster = keys
        return Roster(dict(keys))

    def route_shares(self, shares: list[ShareKeys]) -> dict[int, dict[int, bytes]]:
        """Returns, per recipient, the ciphertexts addressed to it (senders are U2). A sender
        whose table misses a member, or holds a ciphertext of the wrong size, is left out of U2
        (as if it had dropped before sharing) and named."""
        senders: dict[int, ShareKeys] = {}
        for s in shares:
            if s.client not in self.roster:
                continue
            if set(s.ciphertexts) != set(self.roster) - {s.client}:
                self.blame(s.client, "did not send a share to every other client")
            elif not all(isinstance(c, bytes) and len(c) == CIPHERTEXT_BYTES
                         for c in s.ciphertexts.values()):
                self.blame(s.client, f"sent an encrypted share that is not {CIPHERTEXT_BYTES} "
                                     "bytes")
            else:
                senders[s.client] = s
        _check_quorum(len(senders), self.cfg, "clients that shared keys")
        self.u2 = tuple(sorted(senders))
        out: dict[int, dict[int, bytes]] = {v: {} for v in self.u2}
        for s in senders.values():
            for v, ciphertext in s.ciphertexts.items():
                if v in out:
                    out[v][s.client] = ciphertext
        return out

    def collect_masked(self, inputs: list[MaskedInput]) -> UnmaskRequest:
        """Take the masked vectors; one of the wrong shape or type excludes its sender (it
        becomes a dropout, whose masks the others' shares remove). Recipients' complaints about
        a dealer's share name that dealer; the shares it dealt to others may still rebuild its
        secrets (checked at :meth:`finish`)."""
        self.masked = {}
        for m in inputs:
            if m.client not in self.u2 or m.client in self.masked:
                raise SecAggError(f"unexpected masked input from client {m.client}")
            vector = m.masked
            if not isinstance(vector, np.ndarray) or vector.shape != (self.cfg.vector_size,) \
                    or vector.dtype != self.cfg.dtype:
                shape = getattr(vector, "shape", None)
                dtype = getattr(vector, "dtype", None)
                self.blame(m.client, f"sent a masked vector of shape {shape} and dtype {dtype}, "
                                     f"not ({self.cfg.vector_size},) {np.dtype(self.cfg.dtype)}")
                continue
            self.masked[m.client] = vector
            for dealer, why in m.complaints.items():
                if dealer in self.u2:
                    self.blame(dealer, f"client {m.client} reports {why}")
        _check_quorum(len(self.masked), self.cfg, "masked inputs")
        survivors = tuple(sorted(self.masked))
        self.request = UnmaskRequest(survivors, tuple(u for u in self.u2 if u not in self.masked))
        return self.request

    def finish(self, responses: list[UnmaskResponse]) -> np.ndarray:
        """The sum of the survivors' vectors (decoded to floats).

        Raises :class:`SecAggError` when too few answered, when a secret cannot be rebuilt from
        shares that fit its commitment, or when the unmasked sum lies outside what the
        survivors' values can add up to (a masked vector that was not input plus masks)."""
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
            seed = self._rebuild(answers, u, "b", "self-mask seed",
                                 functools.partial(self._seed_fits, u))
            total -= prg(seed, self.cfg)
        for u in dropped:  # remove the pairwise masks survivors added towards dropped u
            raw = self._rebuild(answers, u, "s", "mask key",
                                functools.partial(self._key_fits, u))
            key = X25519PrivateKey.from_private_bytes(raw)
            for v in survivors:
                mask = prg(pair_seed(key, self.roster[v][1], self.cfg), self.cfg)
                # v added +mask if v < u else -mask; undo it
                total = total - mask if v < u else total + mask
        values = self.cfg.decode(total)
        bound = len(survivors) * (self.cfg.value_range + 2.0 ** -self.cfg.scale_bits)
        if not np.all(np.abs(values) <= bound):
            raise SecAggError(
                f"the unmasked sum has values beyond what {len(survivors)} clients' values "
                f"(each within value_range={self.cfg.value_range}) can add up to: a survivor's "
                "masked vector was not its input plus its masks; the sum is refused"
            )
        return values

    def _seed_fits(self, client: int, seed: bytes) -> bool:
        committed = self.commitments.get(client)
        return committed is None or commit(seed, client, self.cfg) == committed

    def _key_fits(self, client: int, raw_private: bytes) -> bool:
        return _public_of(raw_private) == self.roster[client][1]

    def _rebuild(self, answers: list[UnmaskResponse], owner: int, kind: str, what: str,
                 valid: Callable[[bytes], bool]) -> bytes:
        """Rebuild ``owner``'s secret from the answers' shares, checked by ``valid``.

        The honest path costs one interpolation. When the first ``threshold`` shares do not
        give a valid secret, every ``threshold``-subset is tried (up to :attr:`MAX_SUBSETS`):
        the valid secret is taken from one that gives it, and the holders of the shares off
        that polynomial are named, but only if it is the one polynomial that gives the secret.
        (Colluders holding two or more shares can craft a second polynomial through their
        shares that gives the same secret, and thereby make honest holders look wrong; then
        nobody is named and the finding goes to :attr:`unresolved`.)
        """
        t = self.cfg.threshold
        shares: dict[int, int] = {}
        for r in answers:
            table = r.b_shares if kind == "b" else r.s_shares
            if owner not in table:
                continue  # it holds none (it complained about the dealer) or withheld it
            try:
                shares[r.client] = shamir.share_from_bytes(table[owner])
            except (PrivacyError, TypeError) as exc:
                self.blame(r.client, f"returned a malformed share of client {owner}'s {what}: "
                                     f"{exc}")
        points = sorted(shares)
        if len(points) < t:
            self.unresolved.append(f"too few valid shares of client {owner}'s {what} came back")
            raise SecAggError(
                f"secure sum failed: only {len(points)} valid shares of client {owner}'s {what} "
                f"came back, {t} are needed; the sum is refused")
        secret = _try_combine({x: shares[x] for x in points[:t]}, t)
        if secret is not None and valid(secret):
            return secret  # the honest path
        found: list[tuple[bytes, frozenset[int]]] = []  # (secret, the shares on its polynomial)
        subsets = itertools.combinations(points, t)
        for subset in itertools.islice(subsets, self.MAX_SUBSETS):
            if any(on.issuperset(subset) for _, on in found):
                continue  # a polynomial already found
            base = {x: shares[x] for x in subset}
            secret = _try_combine(base, t)
            if secret is not None and valid(secret):
                found.append((secret, frozenset(
                    x for x in points if x in base or shamir.interpolate(base, x) == shares[x])))
        searched_all = next(subsets, None) is None
        if not found:
            self.unresolved.append(f"no {t} shares of client {owner}'s {what} rebuild it")
            raise SecAggError(
                f"secure sum failed: no {t} of the {len(points)} shares of client {owner}'s "
                f"{what} rebuild what it committed to (it dealt bad shares, or too many were "
                "corrupted); the sum is refused")
        off = [x for x in points if x not in found[0][1]]
        if searched_all and len(found) == 1:
            for x in off:
                self.blame(x, f"returned a share of client {owner}'s {what} that does not fit "
                              f"the others (or client {owner} dealt it a bad one)")
        else:
            self.unresolved.append(
                f"{len(off)} of {len(points)} shares of client {owner}'s {what} do not fit, and "
                "colluders could have made honest ones look wrong; nobody is named (the sum is "
                "still right)")
        return found[0][0]


# ---- helpers ----------------------------------------------------------------------------------
#: raw X25519 public keys and self-mask commitments are 32 bytes
KEY_BYTES = 32
#: an encrypted share: a b share and an s share, plus AES-GCM's 16-byte tag
CIPHERTEXT_BYTES = 2 * shamir.SHARE_BYTES + 16


def _try_combine(shares: Mapping[int, int], threshold: int) -> bytes | None:
    try:
        return shamir.combine(shares, threshold)
    except PrivacyError:
        return None


def _public_of(raw_private: bytes) -> bytes:
    """The X25519 public key of a rebuilt private key (what the client advertised)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return _raw_public(X25519PrivateKey.from_private_bytes(raw_private))


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
