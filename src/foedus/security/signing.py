"""Signed messages: every update carries an Ed25519 signature of its sender.

Mutual TLS proves who opened a *connection*; it says nothing about who wrote a message that a
broker relays (Kafka without mTLS, a shared MQTT listener, a relay through an edge aggregator).
The ``sign`` stage closes that gap end to end: each client signs its outgoing messages with its
own private key, and the server verifies every incoming message against a registry of known
public keys before anything else touches it. A message from an unknown sender, without a
signature, or whose bytes were changed after signing (another sender name, another round, other
parameters) is refused, logged and counted in the round's ``rejected`` reasons.

What is signed is a SHA-512 digest of a canonical form of the whole message: every header field
(job, round, sender, kind, message id, timestamp, trail including the ``sign`` tag, recipient),
the example count, the metrics, the metadata except the signature itself, and every array's
name, dtype, shape and raw bytes. Hashing the arrays in place avoids a second serialised copy of
a large model; SHA-512 is collision resistant, so signing the digest is as strong as signing the
encoded bytes.

Put ``sign`` *last* in the pipeline: the client signs exactly what it sends, and the server
(which undoes stages in reverse order) verifies first. The trail enforces this: a message whose
last filter was not ``sign`` is refused.

Job file::

    pipeline:
      - {type: sign, params: {private_key: "pki/sign/{sender}.key", public_keys: pki/sign/public}}

``{sender}`` in ``private_key`` becomes the client's id, so every client process reads only its
own key; ``public_keys`` is a directory of ``<participant>.pub`` files (or a mapping of
participant to file). Keys are made with :func:`create_signing_keys`.

The other direction. What the server broadcasts (each round's model, the final ``stop``) steers
every client, so a job that signs updates signs broadcasts too: the server signs each one with
its own key (:meth:`SignStage.broadcast_signer`: ``server_key``, by default ``private_key`` with
``{sender}`` = the server's name, so ``create_signing_keys(dir, ["server", ...])`` serves both;
or the ECDSA ``server.key`` that ``foedus certs`` wrote), and each client checks it against the
server's public key before obeying it (:meth:`SignStage.broadcast_verifier`:
``server_public_key``, a ``.pub`` file or the server's certificate ``server.pem``; by default
the server's entry in ``public_keys``). A broadcast signature is made under another domain
than an update's, so neither can stand for the other; refusals (``unsigned``,
``bad_signature``) are counted by the verifier and logged in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foedus.core.errors import ConfigError, RejectedUpdate, require
from foedus.core.filter import SIGN, Filter, Half, Stage, stages
from foedus.core.message import Message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

log = logging.getLogger("foedus.security.signing")

#: the trail tag of a signed message
TAG = "sign"
#: what the ``sign`` stage needs installed (``foedus plugins`` shows it): cryptography
REQUIRES_EXTRA = "tls"
#: the metadata key that carries the 64-byte signature
SIGNATURE_META = "foedus.signature"
#: domain separation: a signature made for something else never verifies as a message
_DOMAIN = b"foedus-message-signature-v1"
#: ... and a client's update signature never verifies as the server's broadcast (or back)
_BROADCAST_DOMAIN = b"foedus-broadcast-signature-v1"

#: a key that signs: Ed25519 (``create_signing_keys``) or ECDSA (``foedus certs``' server.key)
SigningKey = Any
#: a key that verifies: Ed25519 or ECDSA public key
VerifyKey = Any


def signed_digest(msg: Message, domain: bytes = _DOMAIN) -> bytes:
    """The SHA-512 digest a signature covers (see the module docstring for what is in it)."""
    import msgpack

    h = msg.header
    arrays = []
    for name, value in msg.params.items():
        array = np.asarray(value)
        if array.dtype.byteorder == ">":  # the wire format is little-endian
            array = array.astype(array.dtype.newbyteorder("<"))
        arrays.append((name, array))
    canonical = msgpack.packb(
        [
            h.job_id, h.round, h.sender, h.kind.value, h.message_id, h.timestamp,
            list(h.trail), h.recipient, msg.num_examples, [[k, float(v)] for k, v in
                                                          msg.metrics.items()],
            _plain({k: v for k, v in msg.meta.items() if k != SIGNATURE_META}), msg.error,
            [[name, a.dtype.str, list(a.shape)] for name, a in arrays],
        ],
        use_bin_type=True,
    )
    digest = hashlib.sha512(domain)
    digest.update(len(canonical).to_bytes(8, "little"))
    digest.update(canonical)
    for _, array in arrays:
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return digest.digest()


def _digest_or_none(msg: Message) -> bytes | None:
    """A broadcast's digest, or None for content no signer could have digested (a metric that
    is not a number): such a broadcast is refused like a bad signature, never a traceback."""
    try:
        return signed_digest(msg, _BROADCAST_DOMAIN)
    except Exception:  # whatever the content: it cannot carry a valid signature
        return None


def _plain(value: Any) -> Any:
    """Mapping proxies and tuples become dicts and lists, as they do on the wire."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ---- keys --------------------------------------------------------------------------------------


def _ed25519() -> Any:
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "tls")


def _check_name(name: str) -> str:
    if not name or any(c in name for c in "/\\\x00") or name.startswith("."):
        raise ConfigError(f"participant name {name!r} cannot name a key file")
    return name


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file; a clear ConfigError otherwise."""
    serialization = require("cryptography.hazmat.primitives.serialization", "tls")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read signing key {str(path)!r}: {exc}") from exc
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise ConfigError(f"signing key {str(path)!r} is not an Ed25519 private key")
    return key  # type: ignore[no-any-return]


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    serialization = require("cryptography.hazmat.primitives.serialization", "tls")
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read public key {str(path)!r}: {exc}") from exc
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise ConfigError(f"public key {str(path)!r} is not an Ed25519 public key")
    return key  # type: ignore[no-any-return]


def load_broadcast_key(path: str | Path) -> SigningKey:
    """The server's broadcast-signing key: Ed25519, or the ECDSA key of its ``foedus certs``
    certificate (one key file fewer to distribute)."""
    serialization = require("cryptography.hazmat.primitives.serialization", "tls")
    ec = require("cryptography.hazmat.primitives.asymmetric.ec", "tls")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the server's signing key {str(path)!r}: {exc}") from exc
    if not isinstance(key, _ed25519().Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"server key {str(path)!r} is neither Ed25519 nor ECDSA")
    return key


def load_broadcast_public_key(path: str | Path) -> VerifyKey:
    """The key clients check broadcasts with: a PEM public key (``server.pub``) or the
    server's X.509 certificate (``server.pem`` from ``foedus certs``)."""
    serialization = require("cryptography.hazmat.primitives.serialization", "tls")
    x509 = require("cryptography.x509", "tls")
    ec = require("cryptography.hazmat.primitives.asymmetric.ec", "tls")
    try:
        data = Path(path).read_bytes()
        key = (x509.load_pem_x509_certificate(data).public_key()
               if b"BEGIN CERTIFICATE" in data else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the server's public key {str(path)!r}: {exc}") from exc
    if not isinstance(key, _ed25519().Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ConfigError(f"server public key {str(path)!r} is neither Ed25519 nor ECDSA")
    return key


def _sign_digest(key: SigningKey, digest: bytes) -> bytes:
    if isinstance(key, _ed25519().Ed25519PrivateKey):
        return key.sign(digest)  # type: ignore[no-any-return]
    ec = require("cryptography.hazmat.primitives.asymmetric.ec", "tls")
    hashes = require("cryptography.hazmat.primitives.hashes", "tls")
    return key.sign(digest, ec.ECDSA(hashes.SHA256()))  # type: ignore[no-any-return]


def _verifies(key: VerifyKey, signature: bytes, digest: bytes | None) -> bool:
    invalid = require("cryptography.exceptions", "tls").InvalidSignature
    if digest is None:
        return False
    try:
        if isinstance(key, _ed25519().Ed25519PublicKey):
            key.verify(signature, digest)
        else:
            ec = require("cryptography.hazmat.primitives.asymmetric.ec", "tls")
            hashes = require("cryptography.hazmat.primitives.hashes", "tls")
            key.verify(signature, digest, ec.ECDSA(hashes.SHA256()))
    except (invalid, ValueError):
        return False
    return True


def load_public_keys(source: str | Path | Mapping[str, str | Path]) -> dict[str, Ed25519PublicKey]:
    """The registry of known senders: a directory of ``<name>.pub`` files, or a mapping."""
    if isinstance(source, Mapping):
        files = {_check_name(str(k)): Path(v) for k, v in source.items()}
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise ConfigError(f"public_keys: {str(directory)!r} is not a directory")
        files = {p.stem: p for p in sorted(directory.glob("*.pub"))}
    if not files:
        raise ConfigError(f"public_keys: no public keys found in {source!r}")
    return {name: load_public_key(path) for name, path in files.items()}


def create_signing_keys(directory: str | Path, participants: Iterable[str]) -> dict[str, Path]:
    """Write a fresh key pair per participant: ``<dir>/<name>.key`` (private, mode 0600) and
    ``<dir>/public/<name>.pub``. Returns the private key paths by participant.

    In a real deployment each organisation runs this for itself and sends only its ``.pub``
    file to the server's operator.
    """
    serialization = require("cryptography.hazmat.primitives.serialization", "tls")
    out = Path(directory)
    (out / "public").mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in participants:
        key = _ed25519().Ed25519PrivateKey.generate()
        private = out / f"{_check_name(name)}.key"
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ))
        (out / "public" / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ))
        written[name] = private
    return written


# ---- the two halves ----------------------------------------------------------------------------


class SignFilter(Filter):
    """Client half: signs every outgoing message with the sender's private key.

    ``private_key`` is a key, or a path in which ``{sender}`` is replaced by the message's
    sender; the key is read on first use and a missing key is an error, so nothing ever leaves
    unsigned.
    """

    blocking = True  # hashing a large model is CPU work: keep it off the event loop
    pushes = (TAG,)

    def __init__(self, private_key: str | Path | Ed25519PrivateKey, name: str = "sign") -> None:
        super().__init__(name)
        self._template = None if not isinstance(private_key, str | Path) else str(private_key)
        self._keys: dict[str, Ed25519PrivateKey] = {}
        self._fixed: Ed25519PrivateKey | None = (
            None if isinstance(private_key, str | Path) else private_key
        )

    def _key(self, sender: str) -> Ed25519PrivateKey:
        if self._fixed is not None:
            return self._fixed
        if sender not in self._keys:
            assert self._template is not None
            self._keys[sender] = load_private_key(
                self._template.replace("{sender}", _check_name(sender))
            )
        return self._keys[sender]

    def process(self, msg: Message) -> Message:
        key = self._key(msg.sender)
        msg = msg.push_trail(TAG)
        signature = key.sign(signed_digest(msg))
        return msg.replace(meta={**msg.meta, SIGNATURE_META: signature})


class VerifyFilter(Filter):
    """Server half: passes on only messages signed by the registered key of their sender.

    Refused messages are dropped (never reach the server pod, so a forger cannot even use up a
    client's one answer per round), logged with the reason, and counted in :attr:`rejected` and
    in :attr:`pending` until the stage folds them into the round's record.
    """

    blocking = True
    pops = (TAG,)

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey], name: str = "verify") -> None:
        super().__init__(name)
        if not public_keys:
            raise ConfigError("verify: the registry of public keys is empty")
        self.public_keys = dict(public_keys)
        self.rejected: Counter[str] = Counter()
        self.pending: Counter[str] = Counter()
        self.verified = 0
        self.lock = threading.Lock()  # process() runs in a worker thread, after_round on the loop

    def check(self, msg: Message) -> None:
        """Raise :class:`RejectedUpdate` unless ``msg`` carries a valid signature."""
        signature = msg.meta.get(SIGNATURE_META)
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise RejectedUpdate("unsigned", f"message from {msg.sender!r} carries no signature")
        if not msg.trail or msg.trail[-1] != TAG:
            raise RejectedUpdate(
                "unsigned", f"message from {msg.sender!r} was changed by filters after signing"
            )
        key = self.public_keys.get(msg.sender)
        if key is None:
            raise RejectedUpdate("unknown_signer", f"{msg.sender!r} has no registered key")
        invalid = require("cryptography.exceptions", "tls").InvalidSignature
        try:
            key.verify(signature, signed_digest(msg))
        except invalid:
            raise RejectedUpdate(
                "bad_signature", f"signature does not match {msg.sender!r}'s key and the content"
            ) from None
        except Exception as exc:  # content no signer could have made (metrics not numbers)
            raise RejectedUpdate("bad_signature", f"the content of {msg.sender!r}'s message "
                                 f"cannot be digested ({type(exc).__name__}: {exc})") from None

    def process(self, msg: Message) -> Message | None:
        try:
            self.check(msg)
        except RejectedUpdate as exc:
            with self.lock:
                self.rejected[exc.reason] += 1
                self.pending[exc.reason] += 1
            log.warning("refused message from %r (round %d): %s", msg.sender, msg.round, exc)
            return None
        self.verified += 1
        meta = {k: v for k, v in msg.meta.items() if k != SIGNATURE_META}
        return msg.pop_trail(TAG).replace(meta=meta)


class BroadcastSigner:
    """Server side: signs every broadcast (model or control) with the server's key, last.

    A callable ``Message -> Message`` for :attr:`foedus.roles.server.ServerPod.broadcast_signer`.
    The signature goes into the same meta key as an update's, under another domain.
    """

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.signed = 0

    def __call__(self, msg: Message) -> Message:
        signature = _sign_digest(self.key, signed_digest(msg, _BROADCAST_DOMAIN))
        self.signed += 1
        return msg.replace(meta={**msg.meta, SIGNATURE_META: signature})


class BroadcastVerifier:
    """Client side: :meth:`check` raises :class:`RejectedUpdate` unless a broadcast carries the
    server's valid signature; refusals are counted in :attr:`rejected` by reason.

    A callable for :class:`~foedus.roles.client.ClientPod`'s ``verify_broadcast``: the client
    obeys (trains on, stops for) only what passes, so a stranger on the broker cannot stop or
    steer the job. Thread-safe: clients may check a large model in a worker thread.
    """

    def __init__(self, key: VerifyKey) -> None:
        self.key = key
        self.rejected: Counter[str] = Counter()
        self.verified = 0
        self._lock = threading.Lock()

    def check(self, msg: Message) -> None:
        signature = msg.meta.get(SIGNATURE_META)
        reason = None
        if not isinstance(signature, bytes) or not 0 < len(signature) <= 512:
            reason, why = "unsigned", "carries no server signature"
        elif not _verifies(self.key, signature, _digest_or_none(msg)):
            reason, why = "bad_signature", "is not signed by the server's key"
        with self._lock:
            if reason is None:
                self.verified += 1
                return
            self.rejected[reason] += 1
        raise RejectedUpdate(reason, f"{msg.kind.value} from {msg.sender!r} {why}")

    __call__ = check


@stages.register("sign")
class SignStage(Stage):
    """Ed25519 signatures on every update: clients sign, the server verifies.

    ``private_key``: path to the client's key, ``{sender}`` replaced by its id (needed where
    clients run). ``public_keys``: directory of ``<name>.pub`` files or a mapping (needed where
    the server runs). Each side only checks what it needs, so one job file serves both.

    Broadcasts: ``server_key`` (where the server runs; default ``private_key`` with ``{sender}``
    = the server's name) signs them; ``server_public_key`` (where clients run: a ``.pub`` file or
    the server's certificate; default the server's entry in ``public_keys``) checks them.
    """

    privacy_operations = (SIGN,)

    def __init__(
        self, private_key: str | None = None,
        public_keys: str | Mapping[str, str] | None = None,
        server_key: str | None = None, server_public_key: str | None = None,
    ) -> None:
        if private_key is None and public_keys is None and server_public_key is None:
            raise ConfigError("sign: give private_key (clients) and/or public_keys (server)")
        for label, value in [("private_key", private_key), ("server_key", server_key),
                             ("server_public_key", server_public_key)]:
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"sign.{label}: expected a path, got {value!r}")
        self.private_key = private_key
        self.public_keys = public_keys
        self.server_key = server_key
        self.server_public_key = server_public_key
        self.verifier: VerifyFilter | None = None

    def broadcast_signer(self, server: str = "server") -> BroadcastSigner:
        """What the server (named ``server``) signs its broadcasts with; read now, so a server
        without its key refuses to start rather than broadcast unsigned."""
        template = self.server_key or self.private_key
        if template is None:
            raise ConfigError("sign.server_key is needed where the server runs: it signs the "
                              "models and control messages it broadcasts")
        return BroadcastSigner(load_broadcast_key(template.replace("{sender}",
                                                                   _check_name(server))))

    def broadcast_verifier(self, server: str = "server") -> BroadcastVerifier:
        """What clients check broadcasts with: the server's (named ``server``) public key."""
        if self.server_public_key is not None:
            return BroadcastVerifier(load_broadcast_public_key(self.server_public_key))
        if isinstance(self.public_keys, Mapping) and server in self.public_keys:
            return BroadcastVerifier(load_broadcast_public_key(self.public_keys[server]))
        if isinstance(self.public_keys, str) and (Path(self.public_keys) / f"{server}.pub"
                                                  ).is_file():
            return BroadcastVerifier(load_broadcast_public_key(
                Path(self.public_keys) / f"{server}.pub"))
        raise ConfigError("sign.server_public_key is needed where clients run: clients obey "
                          "only broadcasts signed by the server (its .pub file or certificate)")

    def client(self) -> Filter:
        if self.private_key is None:
            raise ConfigError("sign.private_key is needed where clients run")
        return SignFilter(self.private_key)

    def server(self) -> Filter:
        if self.public_keys is None:
            raise ConfigError("sign.public_keys is needed where the server runs")
        self.verifier = VerifyFilter(load_public_keys(self.public_keys))
        return self.verifier

    def halves(self) -> tuple[Half, Half]:
        """From the classes: building the halves reads key files, and each side has only its
        own keys."""
        return Half("sign", pushes=SignFilter.pushes), Half("verify", pops=VerifyFilter.pops)

    def after_round(self, record: Any) -> None:
        """Fold the signatures refused during the round into its record's ``rejected``."""
        if self.verifier is None:
            return
        with self.verifier.lock:
            pending = dict(self.verifier.pending)
            self.verifier.pending.clear()
        for reason, count in pending.items():
            record.rejected[reason] = record.rejected.get(reason, 0) + count
