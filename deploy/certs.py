"""The consortium's CA, the SuperLink's TLS certificate and hospitals' node keys.

`init` writes ca.crt/ca.key and server.pem/server.key (SANs for every address
the hospitals use, and always 127.0.0.1 and localhost: Flower's own ServerApp
launcher and the operator's `flwr` connect to the SuperLink there); `hospital` writes an EC P-384 key pair in OpenSSH format, the
form `flower-supernode --auth-supernode-private-key` and `flwr supernode
register` take. Private keys are created with mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import FedwardError

CURVE = ec.SECP384R1()
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LOOPBACK_SANS = ("127.0.0.1", "localhost")  # where Flower's SuperExec and `flwr` reach the SuperLink


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def cert_paths(out_dir: Path) -> CertPaths:
    return CertPaths(out_dir / "ca.crt", out_dir / "ca.key", out_dir / "server.pem", out_dir / "server.key")


def init_ca_and_server(out_dir: Path, server_name: str, sans: list[str], days: int = 365) -> CertPaths:
    """A new CA and a server certificate it signs, for `server_name` and `sans`."""
    if days < 1:
        raise FedwardError(f"--days={days} must be at least 1")
    paths = cert_paths(out_dir)
    _refuse_existing(paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(CURVE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedward consortium CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days * 5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(CURVE)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries([server_name, *sans, *LOOPBACK_SANS])), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(paths.ca_key, _pem_key(ca_key))
    _write_private(paths.server_key, _pem_key(server_key))
    _write_public(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def hospital_keys(out_dir: Path, name: str) -> tuple[Path, Path]:
    """An EC key pair for one hospital's SuperNode: `<out>/<name>` and `<name>.pub`."""
    if not NAME_PATTERN.match(name):
        raise FedwardError(
            f"hospital name {name!r}: use letters, digits, '.', '_' or '-' (at most 63 characters)"
        )
    private, public = out_dir / name, out_dir / f"{name}.pub"
    _refuse_existing(private, public)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVE)
    _write_private(private, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    _write_public(public, key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public


def check_tls_files(ca_cert: Path, server_cert: Path | None = None, server_key: Path | None = None) -> None:
    """Refuse missing, unreadable, expired or mismatched files before anything connects."""
    ca = _load_cert(ca_cert)
    _check_validity(ca, ca_cert)
    if server_cert is None:
        return
    cert = _load_cert(server_cert)
    _check_validity(cert, server_cert)
    if server_key is not None:
        key = _load_private_key(server_key)
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
                cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise FedwardError(f"{server_key} is not the key of {server_cert}; pass the matching pair")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise FedwardError(f"{server_cert} was not issued by {ca_cert} ({err}); use the consortium CA") from err


def check_loopback_san(server_cert: Path) -> None:
    """The SuperLink's certificate must name 127.0.0.1: Flower's SuperExec launches the
    ServerApp against the SuperLink's local API at 127.0.0.1 over TLS, and the run stays
    pending forever ("IP address mismatch") when the certificate does not cover it."""
    cert = _load_cert(server_cert)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    if ipaddress.ip_address("127.0.0.1") not in sans.get_values_for_type(x509.IPAddress):
        raise FedwardError(
            f"{server_cert} has no SAN for 127.0.0.1, where Flower's ServerApp launcher and the operator's "
            "`flwr` connect to the SuperLink (a run would stay pending on 'IP address mismatch'); "
            "issue the certificate again with `fedward certs init` (it adds 127.0.0.1 and localhost), "
            "or with another tool, add `--san 127.0.0.1`"
        )


def check_node_key(path: Path) -> None:
    """A hospital's private key must be an EC key in OpenSSH format, readable only by it."""
    key = _load_private_key(path, openssh=True)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedwardError(
            f"{path}: a {type(key).__name__.replace('_', '')} key; SuperNode authentication needs an EC key "
            "(create one with `fedward certs hospital NAME`)"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise FedwardError(f"{path}: readable by others (mode 0{mode:o}); a private key must be mode 0600: "
                           f"chmod 600 {path}")


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as err:
        raise FedwardError(f"{path}: cannot read the certificate ({err.strerror}); check the path") from err
    except ValueError as err:
        raise FedwardError(f"{path}: not a PEM certificate ({err})") from err


def _load_private_key(path: Path, openssh: bool = False):  # type: ignore[no-untyped-def]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FedwardError(f"{path}: cannot read the key ({err.strerror}); check the path") from err
    try:
        if openssh:
            return serialization.load_ssh_private_key(data, password=None)
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        form = "OpenSSH" if openssh else "PEM"
        raise FedwardError(f"{path}: not an unencrypted {form} private key ({err})") from err


def _check_validity(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc < now:
        raise FedwardError(
            f"{path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; issue a new one "
            "with `fedward certs init`"
        )
    if cert.not_valid_before_utc > now:
        raise FedwardError(f"{path}: the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}")


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise FedwardError(f"{path} exists already; move it away first (keys are never overwritten)")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
