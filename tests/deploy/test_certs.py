"""Certificates and keys the operator and hospitals create, and the checks before start."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.errors import FedwardError
from deploy.certs import check_node_key, check_tls_files, hospital_keys, init_ca_and_server
from fedward.cli import main


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_has_sans_usage_and_validity(tmp_path: Path):
    paths = init_ca_and_server(tmp_path, "fl.consortium.org", ["10.0.0.5", "superlink"], days=30)
    ca, server = load(paths.ca_cert), load(paths.server_cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fl.consortium.org", "superlink", "localhost"]
    # 127.0.0.1: what Flower's own ServerApp launcher and the operator's `flwr` connect to
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"),
                                                        ipaddress.ip_address("127.0.0.1")]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=10)
    server.verify_directly_issued_by(ca)
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    check_tls_files(paths.ca_cert, paths.server_cert, paths.server_key)


def test_hospital_key_is_ec_openssh_private_and_never_overwritten(tmp_path: Path):
    private, public = hospital_keys(tmp_path, "cleveland")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    with pytest.raises(FedwardError, match="exists already"):
        hospital_keys(tmp_path, "cleveland")
    assert private.read_bytes() == before


def test_rsa_node_key_is_refused_with_the_file_named(tmp_path: Path):
    path = tmp_path / "rsa_key"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    with pytest.raises(FedwardError, match=f"{path}: a RSAPrivateKey key; SuperNode authentication needs an EC key"):
        check_node_key(path)


def test_node_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path, capsys):
    private, _ = hospital_keys(tmp_path, "va")
    check_node_key(private)  # as created: 0600
    for mode in (0o640, 0o604):
        private.chmod(mode)
        with pytest.raises(FedwardError, match=rf"{private}: readable by others \(mode 0{mode:o}\).*: chmod 600 {private}$"):
            check_node_key(private)
    init_ca_and_server(tmp_path / "certs", "localhost", [])
    code = main(["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
                 "--key", str(private), "--hospital", "va", "--data", str(tmp_path), "--dry-run"])
    assert code == 2 and f"chmod 600 {private}" in capsys.readouterr().err


def test_expired_server_certificate_is_refused(tmp_path: Path):
    paths = init_ca_and_server(tmp_path, "localhost", [])
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    server = load(paths.server_cert)
    old = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    expired = (x509.CertificateBuilder().subject_name(server.subject).issuer_name(server.issuer)
               .public_key(server.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(old).not_valid_after(old + dt.timedelta(days=30))
               .sign(ca_key, hashes.SHA384()))
    paths.server_cert.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(FedwardError, match=r"server.pem: the certificate expired on 2020-01-31"):
        check_tls_files(paths.ca_cert, paths.server_cert, paths.server_key)


def test_certificate_from_another_ca_is_refused(tmp_path: Path):
    ours = init_ca_and_server(tmp_path / "a", "localhost", [])
    theirs = init_ca_and_server(tmp_path / "b", "localhost", [])
    with pytest.raises(FedwardError, match="was not issued by"):
        check_tls_files(ours.ca_cert, theirs.server_cert)


def test_superlink_refuses_a_certificate_without_the_loopback_san(tmp_path: Path, capsys):
    """A certificate made before `certs init` added 127.0.0.1 (or by other tools): Flower's
    ServerApp launcher connects to 127.0.0.1 and dies on "IP address mismatch", and `flwr run`
    hangs with the run pending. `fedward superlink` refuses it up front, naming the SAN."""
    paths = init_ca_and_server(tmp_path / "certs", "localhost", [])
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    server = load(paths.server_cert)
    dns_only = (x509.CertificateBuilder().subject_name(server.subject).issuer_name(server.issuer)
                .public_key(server.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(server.not_valid_before_utc).not_valid_after(server.not_valid_after_utc)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(ca_key, hashes.SHA384()))
    paths.server_cert.write_bytes(dns_only.public_bytes(serialization.Encoding.PEM))
    code = main(["superlink", "--certs", str(tmp_path / "certs"), "--database", str(tmp_path / "s.db"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "server.pem has no SAN for 127.0.0.1" in err and "--san 127.0.0.1" in err, err


def test_launchers_name_the_missing_file_before_connecting(tmp_path: Path, capsys):
    init_ca_and_server(tmp_path / "certs", "localhost", ["127.0.0.1"])
    hospital_keys(tmp_path / "keys", "va")
    (tmp_path / "certs" / "server.key").unlink()
    assert main(["superlink", "--certs", str(tmp_path / "certs"), "--database", str(tmp_path / "s.db"), "--dry-run"]) == 2
    assert f"{tmp_path / 'certs' / 'server.key'}: cannot read the key" in capsys.readouterr().err
    args = ["supernode", "--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "certs" / "ca.crt"),
            "--key", str(tmp_path / "keys" / "va"), "--hospital", "va", "--dry-run"]
    assert main([*args, "--data", str(tmp_path / "nowhere")]) == 2
    assert f"--data {tmp_path / 'nowhere'} does not exist on this machine" in capsys.readouterr().err
    assert main([*args[:6], str(tmp_path / "keys" / "va.pub"), *args[7:], "--data", str(tmp_path)]) == 2
    assert "va.pub: not an unencrypted OpenSSH private key" in capsys.readouterr().err
    assert main([*args, "--data", str(tmp_path)]) == 0
    assert "--root-certificates" in capsys.readouterr().out
