"""Create a deployment's certificates: one CA, one server certificate, one per participant.

``foedus certs --out DIR --clients a,b,c`` writes::

    DIR/ca.pem  DIR/ca.key                  the deployment's certificate authority
    DIR/server.pem  DIR/server.key          the server (SAN 127.0.0.1, localhost, ::1 + --hosts)
    DIR/clients/<id>.pem  DIR/clients/<id>.key   one per participant, CN = participant id

With mutual TLS the server learns a client's identity from the CN of its certificate
(:func:`foedus.transport.tls.peer_identity`), so each participant gets its own certificate and
key and nobody else's. Running the command again on the same directory keeps the existing CA
and certificates and only issues what is missing, so a participant can be added later
(``--force`` re-issues everything, including a new CA). Private keys are written with mode 0600.

Keys are ECDSA P-256: small, fast to create and accepted by OpenSSL (mosquitto), gRPC's BoringSSL
and Python's ``ssl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foedus.core.errors import ConfigError, FoedusError, require
from foedus.transport.tls import TLSConfig

__all__ = ["DeploymentCerts", "create_deployment_certs", "main_certs"]

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DeploymentCerts:
    """Where a deployment's certificate files are, with ready :class:`TLSConfig` builders."""

    out: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.out / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.out / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.out / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.out / "server.key"

    def server_tls(self, *, require_client_cert: bool = True) -> TLSConfig:
        """The server side: its own certificate, clients verified against the CA."""
        return TLSConfig(self.ca, self.server_cert, self.server_key, require_client_cert)

    def client_tls(self, participant: str | None = None) -> TLSConfig:
        """A client: trusts the CA; with ``participant`` it also presents that participant's
        certificate (mutual TLS). Without, it is a server-authenticated-only client."""
        if participant is None:
            return TLSConfig(self.ca)
        if participant not in self.clients:
            raise ConfigError(
                f"no certificate for participant {participant!r}; have {sorted(self.clients)}"
            )
        cert, key = self.clients[participant]
        return TLSConfig(self.ca, cert, key)


def _check_id(participant: str) -> str:
    if not _ID.match(participant):
        raise ConfigError(
            f"participant id {participant!r} is not valid for a certificate file name: use 1-64"
            " letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return participant


def _name(common_name: str) -> Any:
    x509 = require("cryptography.x509", "tls")
    from cryptography.x509.oid import NameOID

    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "foedus deployment"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _new_key() -> Any:
    ec = require("cryptography.hazmat.primitives.asymmetric.ec", "tls")
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # also when the file existed with wider permissions


def _write_cert(path: Path, cert: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: Iterable[str]) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _issue(
    subject_cn: str, key: Any, issuer: tuple[Any, Any] | None, days: int, *,
    hosts: Sequence[str] = (), purpose: str,
) -> Any:
    """Sign a certificate. ``issuer`` is (ca_cert, ca_key), None for the self-signed CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    subject = _name(subject_cn)
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if purpose == "ca":
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        assert issuer is not None
        usage = (ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server"
                 else ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_san(hosts)), critical=False
            )
    return builder.sign(signing_key, hashes.SHA256())


def _load_ca(out: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reuse the CA in {str(out)!r}: {exc}; use --force") from exc
    return cert, key


def create_deployment_certs(
    out: str | os.PathLike[str],
    clients: Iterable[str],
    *,
    hosts: Iterable[str] = (),
    days: int = 825,
    force: bool = False,
) -> DeploymentCerts:
    """Write a CA, a server certificate and one client certificate per participant into ``out``.

    Existing files are kept (an existing CA signs new client certificates) unless ``force``.
    ``hosts`` adds names/IPs to the server certificate besides 127.0.0.1, localhost and ::1.
    """
    require("cryptography", "tls")
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    ids = [_check_id(c.strip()) for c in clients if c.strip()]
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise ConfigError(f"participant id(s) given twice: {duplicates}")
    # "server" is allowed: it is the federated server actor's id, and with one certificate per
    # actor (`{actor}` in a transport's parameters) that actor connects to the broker as a
    # client too; its certificate goes to clients/server.pem, beside the broker's server.pem
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = DeploymentCerts(out_dir)
    server_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))

    have_ca = result.ca.exists() and result.ca_key.exists()
    if have_ca and not force:
        ca_cert, ca_key = _load_ca(out_dir)
    else:
        ca_key = _new_key()
        ca_cert = _issue("foedus CA", ca_key, None, days, purpose="ca")
        _write_key(result.ca_key, ca_key)
        _write_cert(result.ca, ca_cert)
        force = True  # everything signed by an old CA is now invalid
    if force or not (result.server_cert.exists() and result.server_key.exists()):
        key = _new_key()
        cert = _issue("foedus server", key, (ca_cert, ca_key), days, hosts=server_hosts,
                      purpose="server")
        _write_key(result.server_key, key)
        _write_cert(result.server_cert, cert)

    client_dir = out_dir / "clients"
    existing = {p.stem for p in client_dir.glob("*.pem")} if client_dir.is_dir() else set()
    for participant in sorted(existing | set(ids)):
        pem, keyfile = client_dir / f"{participant}.pem", client_dir / f"{participant}.key"
        if participant in ids and (force or not (pem.exists() and keyfile.exists())):
            key = _new_key()
            cert = _issue(participant, key, (ca_cert, ca_key), days, purpose="client")
            _write_key(keyfile, key)
            _write_cert(pem, cert)
        if pem.exists() and keyfile.exists():
            result.clients[participant] = (pem, keyfile)
    return result


def main_certs(argv: Sequence[str] | None = None) -> int:
    """``foedus certs --out DIR --clients a,b,c [--hosts h1,h2] [--days N] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="foedus certs",
        description="create a deployment's TLS certificates (CA, server, one per client)",
    )
    parser.add_argument("--out", required=True, help="directory to write the certificates into")
    parser.add_argument("--clients", default="",
                        help="comma-separated participant ids, one certificate each (CN = id)")
    parser.add_argument("--hosts", default="",
                        help="extra server host names/IPs besides 127.0.0.1,localhost,::1")
    parser.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    parser.add_argument("--force", action="store_true",
                        help="re-create everything, including a new CA")
    args = parser.parse_args(argv)
    try:
        made = create_deployment_certs(
            args.out, args.clients.split(","),
            hosts=[h.strip() for h in args.hosts.split(",") if h.strip()],
            days=args.days, force=args.force,
        )
    except FoedusError as exc:
        print(f"foedus: error: {exc}", file=sys.stderr)
        return 2
    print(f"CA:      {made.ca}  (keep {made.ca_key} offline)")
    print(f"server:  {made.server_cert}  {made.server_key}")
    for participant, (pem, key) in sorted(made.clients.items()):
        print(f"client {participant}: {pem}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main_certs())
