"""One way to configure TLS and mutual TLS for every network transport.

Each networked transport (MQTT, gRPC, HTTPS, Kafka) accepts the same :class:`TLSConfig`, so a
deployment configures certificates once and switches transports by changing one line of a job
file. The config holds *paths*, never key material: a job file can name them, and the files are
read only when a context is built, so a missing or unreadable file is reported by name at start-up
rather than as an opaque handshake failure later.

* ``ca``: the CA bundle that signs the *other* side's certificate (clients verify the server
  with it; a server with ``require_client_cert`` verifies clients with it).
* ``cert`` / ``key``: this side's certificate chain and private key. A server always needs them; a
  client needs them for mutual TLS.
* ``require_client_cert``: on the server side, refuse clients without a certificate signed by
  ``ca``. The client's identity is then its certificate's common name (:func:`peer_identity`), so
  a client cannot claim another participant's name.

Certificates for a deployment are created by :mod:`foedus.certs` (``foedus certs``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foedus.core.errors import ConfigError

__all__ = ["TLSConfig", "identity_from_cert", "peer_identity"]

PathLike = str | os.PathLike[str]


def _check_readable(role: str, path: Path) -> None:
    """Fail early with a message naming the file and what it is for."""
    if not path.exists():
        raise ConfigError(f"TLS {role} file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"TLS {role} path {str(path)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"TLS {role} file {str(path)!r} is not readable (check permissions)")


@dataclass(frozen=True)
class TLSConfig:
    """Certificates for one side of a TLS connection. See the module docstring."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    require_client_cert: bool = False

    def __init__(
        self,
        ca: PathLike,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        require_client_cert: bool = False,
    ) -> None:
        # Custom __init__ so callers may pass str or Path; the stored fields are always Paths.
        object.__setattr__(self, "ca", Path(ca))
        object.__setattr__(self, "cert", None if cert is None else Path(cert))
        object.__setattr__(self, "key", None if key is None else Path(key))
        if not isinstance(require_client_cert, bool):  # bool("false") would be True
            raise ConfigError(f"tls require_client_cert must be true or false, "
                              f"got {require_client_cert!r}")
        object.__setattr__(self, "require_client_cert", require_client_cert)
        if (self.cert is None) != (self.key is None):
            raise ConfigError(
                "TLS cert and key go together: give both (for mutual TLS or a server) or neither"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | TLSConfig | None) -> TLSConfig | None:
        """Build from a job file's ``tls:`` mapping (keys ``ca``, ``cert``, ``key``,
        ``require_client_cert``); passes a ready TLSConfig or None through."""
        if data is None or isinstance(data, TLSConfig):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"tls must be a mapping, got {type(data).__name__}")
        allowed = {"ca", "cert", "key", "require_client_cert"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(
                f"unknown tls option(s) {sorted(unknown)}; valid options: {sorted(allowed)}"
            )
        if "ca" not in data:
            raise ConfigError("tls needs 'ca': the CA certificate that signs the peer")
        return cls(
            ca=data["ca"], cert=data.get("cert"), key=data.get("key"),
            require_client_cert=data.get("require_client_cert", False),
        )

    @property
    def has_identity(self) -> bool:
        """True when this side presents a certificate of its own."""
        return self.cert is not None

    def check_files(self, *, need_identity: bool = False) -> None:
        """Raise :class:`ConfigError` naming the first missing or unreadable file."""
        _check_readable("CA", self.ca)
        if need_identity and self.cert is None:
            raise ConfigError("this side needs a TLS certificate and key (cert=..., key=...)")
        if self.cert is not None:
            _check_readable("certificate", self.cert)
        if self.key is not None:
            _check_readable("private key", self.key)

    def _load_identity(self, ctx: ssl.SSLContext) -> None:
        if self.cert is None or self.key is None:
            return
        try:
            ctx.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"TLS certificate {str(self.cert)!r} and key {str(self.key)!r} cannot be loaded"
                f" (not PEM, or they do not match): {exc}"
            ) from exc

    def _load_ca(self, ctx: ssl.SSLContext) -> None:
        try:
            ctx.load_verify_locations(cafile=str(self.ca))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"TLS CA file {str(self.ca)!r} is not a PEM certificate: {exc}"
            ) from exc

    def client_context(self) -> ssl.SSLContext:
        """A context for the connecting side: verifies the server against ``ca`` (including the
        host name), and presents ``cert``/``key`` when given (mutual TLS)."""
        self.check_files()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED by default
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_ca(ctx)
        self._load_identity(ctx)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """A context for the listening side: presents ``cert``/``key``; with
        ``require_client_cert`` refuses clients without a certificate signed by ``ca``."""
        self.check_files(need_identity=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_identity(ctx)
        self._load_ca(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        return ctx


def identity_from_cert(cert: Mapping[str, Any] | None) -> str | None:
    """The common name (CN) of a certificate as returned by ``SSLSocket.getpeercert()``."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def peer_identity(ssl_object: ssl.SSLSocket | ssl.SSLObject | None) -> str | None:
    """The verified peer's certificate CN, or None when the peer presented no certificate.

    Only meaningful on a context that verifies the peer (a server with ``require_client_cert``
    or ``CERT_OPTIONAL``, or any client): ``getpeercert()`` returns an empty dict for unverified
    peers, which yields None here, so an unverified name can never be mistaken for an identity.
    """
    if ssl_object is None:
        return None
    return identity_from_cert(ssl_object.getpeercert())
