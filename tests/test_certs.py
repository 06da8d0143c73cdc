"""``foedus certs``: a CA, a server certificate and one client certificate per participant."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from foedus.certs import create_deployment_certs, main_certs
from foedus.core.errors import ConfigError


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_creates_a_ca_a_server_and_one_certificate_per_participant(tmp_path: Path) -> None:
    made = create_deployment_certs(tmp_path, ["alice", "bob"])
    ca = _load(made.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _load(made.server_cert)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sorted(made.clients) == ["alice", "bob"]
    for participant, (pem, _key) in made.clients.items():
        cert = _load(pem)
        cert.verify_directly_issued_by(ca)
        assert _cn(cert) == participant
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_private_keys_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    made = create_deployment_certs(tmp_path, ["alice"])
    for key in (made.ca_key, made.server_key, made.clients["alice"][1]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_extra_hosts_are_added_to_the_server_certificate(tmp_path: Path) -> None:
    made = create_deployment_certs(tmp_path, [], hosts=["fl.example.org", "10.0.0.5"])
    san = _load(made.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "fl.example.org" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)


def test_running_again_keeps_the_ca_and_adds_new_participants(tmp_path: Path) -> None:
    first = create_deployment_certs(tmp_path, ["alice"])
    ca_before, alice_before = first.ca.read_bytes(), first.clients["alice"][0].read_bytes()
    second = create_deployment_certs(tmp_path, ["carol"])
    assert second.ca.read_bytes() == ca_before
    assert second.clients["alice"][0].read_bytes() == alice_before
    _load(second.clients["carol"][0]).verify_directly_issued_by(_load(second.ca))
    assert sorted(second.clients) == ["alice", "carol"]


def test_force_creates_a_new_ca_and_reissues_everything(tmp_path: Path) -> None:
    first = create_deployment_certs(tmp_path, ["alice"])
    ca_before = first.ca.read_bytes()
    again = create_deployment_certs(tmp_path, ["alice"], force=True)
    assert again.ca.read_bytes() != ca_before
    ca = _load(again.ca)
    _load(again.server_cert).verify_directly_issued_by(ca)
    _load(again.clients["alice"][0]).verify_directly_issued_by(ca)


@pytest.mark.parametrize(("ids", "message"), [
    (["../evil"], "not valid"),
    (["a b"], "not valid"),
    (["alice", "alice"], "given twice"),
])
def test_bad_participant_ids_are_refused(tmp_path: Path, ids: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_deployment_certs(tmp_path, ids)


def test_client_tls_for_an_unknown_participant_lists_the_known_ones(tmp_path: Path) -> None:
    made = create_deployment_certs(tmp_path, ["alice"])
    with pytest.raises(ConfigError, match=r"no certificate for participant 'eve'.*alice"):
        made.client_tls("eve")


def test_cli_writes_the_files_and_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    assert main_certs(["--out", str(out), "--clients", "a,b, c"]) == 0
    printed = capsys.readouterr().out
    for name in ("ca.pem", "server.pem", "clients/a.pem", "clients/c.key"):
        assert (out / name).exists()
        assert name.split("/")[-1] in printed


def test_cli_reports_a_bad_id_in_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_certs(["--out", str(tmp_path), "--clients", "ok,not ok"]) == 2
    assert "participant id 'not ok'" in capsys.readouterr().err


def test_the_server_actor_gets_a_client_certificate_of_its_own(tmp_path: Path) -> None:
    # with one certificate per actor ({actor} in the transport's parameters) the federated
    # server connects to the broker as the actor "server": it needs clients/server.pem
    made = create_deployment_certs(tmp_path, ["server", "client-000"])
    cert, key = made.clients["server"]
    assert cert.exists() and key.exists() and made.server_cert.exists()
    assert cert != made.server_cert  # the broker's certificate is untouched
    tls = made.client_tls("server")
    assert tls.cert == cert
