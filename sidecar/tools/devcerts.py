"""Make a local CA and leaf certificates: for ``certs dev``, ``demo`` and the tests.

Never for production: the CA key is written next to the certificates.  ECDSA P-256
keys by default (fast handshakes), RSA-2048 on request (``key_type="rsa"``: the
benchmark's second handshake scenario); the client certificate carries Meta's CN and
DNS SAN.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.config import META_CLIENT_NAME

__all__ = ["CertAuthority", "IssuedCert", "DevCertFiles", "KeyType", "write_dev_certs"]

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class IssuedCert:
    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        _write(cert_path, self.cert_pem, 0o644)
        _write(key_path, self.key_pem, 0o600)


class CertAuthority:
    def __init__(self, name: str = "sidecar dev CA", *, valid_days: int = 3650,
                 key_type: KeyType = "ecdsa") -> None:
        self.key_type = key_type  # of the CA and of every certificate it issues
        self._key = _new_key(key_type)
        now = datetime.now(timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self._key)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCert:
        key = _new_key(self.key_type)
        now = datetime.now(timezone.utc)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(minutes=5))
            .not_valid_after(not_after or now + timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True, slots=True)
class DevCertFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_dev_certs(out_dir: Path, *, server_names: tuple[str, ...] = ("localhost",),
                    server_ips: tuple[str, ...] = ("127.0.0.1", "::1"),
                    key_type: KeyType = "ecdsa") -> DevCertFiles:
    """One CA signing both the server certificate and a client certificate with Meta's CN."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = CertAuthority(key_type=key_type)
    files = DevCertFiles(
        ca_cert=out_dir / "ca.pem", ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem", server_key=out_dir / "server.key",
        client_cert=out_dir / "client.pem", client_key=out_dir / "client.key",
    )
    _write(files.ca_cert, ca.cert_pem, 0o644)
    _write(files.ca_key, ca.key_pem, 0o600)
    ca.issue(server_names[0] if server_names else "localhost", dns_names=server_names,
             ip_addresses=server_ips, server=True).write(files.server_cert, files.server_key)
    ca.issue(META_CLIENT_NAME, dns_names=(META_CLIENT_NAME,)).write(
        files.client_cert, files.client_key)
    return files


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (ecdsa or rsa)")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    # Write then rename: a reader (the hot reload) never sees a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
