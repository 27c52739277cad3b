"""Read and validate the TLS files named under ``tls:``; build the server SSLContext.

``load_material`` reads each file once, checks everything an operator can get wrong
(unparsable PEM, key that does not match the certificate, expired or not-yet-valid
certificate, a "CA" file holding a leaf, a CA whose fingerprint is not pinned) and
returns an immutable ``TLSMaterial``.  The rules are the ``*_problems`` functions here,
each returning every problem it finds: loading refuses with the first (the server must
not start on it), ``sidecar certs check`` reports them all, in the same words.  ``build_context`` turns exactly those bytes into
an ``ssl.SSLContext`` — the files are not read a second time, so a renewal written
between the check and the load cannot slip in unchecked.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, ed448, rsa
from cryptography.x509.oid import NameOID

from sidecar.config import TLSConfig
from sidecar.config.files import PEM_MAX_BYTES, read_file, why_unreadable
from sidecar.errors import TLSMaterialError

__all__ = [
    "CertFacts",
    "TLSMaterial",
    "load_material",
    "build_context",
    "cert_facts",
    "read_pem_certs",
    "read_private_key",
    "key_matches",
    "validity_problems",
    "key_problems",
    "client_ca_problems",
    "SERVER_CIPHERS",
]

# TLS 1.2 suites: forward-secret AEAD only.  TLS 1.3 suites are OpenSSL's defaults (all AEAD).
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True, slots=True)
class CertFacts:
    file: str
    subject: str
    common_name: str | None
    sans: tuple[str, ...]
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    is_ca: bool
    sha256: str

    def seconds_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds()


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    cert_pem: bytes  # server chain, leaf first
    key_pem: bytes
    ca_pem: bytes  # every client CA, concatenated
    server_chain: tuple[CertFacts, ...]
    client_cas: tuple[CertFacts, ...]
    digest: str  # of all the bytes above: "did anything change?"
    client_ca_certs: tuple[x509.Certificate, ...] = ()  # ``client_cas``, parsed


def read_pem_certs(path: Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSMaterialError(f"{what} {path}: no valid PEM certificate") from exc
    # The parser skips a block it cannot read (a file caught half-written, a truncated
    # bundle), where OpenSSL refuses the whole file: every certificate block must count.
    blocks = sum(1 for line in data.splitlines()
                 if line.startswith(b"-----BEGIN ") and line.rstrip().endswith(b"CERTIFICATE-----"))
    if blocks > len(certs):
        raise TLSMaterialError(f"{what} {path}: {blocks - len(certs)} of its {blocks} "
                               "certificate blocks are incomplete or unreadable")
    return data, certs


def read_private_key(path: Path, what: str = "tls.key_file") -> tuple[bytes, object]:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSMaterialError(f"{what} {path}: not an unencrypted PEM private key") from exc
    return data, key


def key_matches(key: object, cert: x509.Certificate) -> bool:
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return False
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return key.public_key().public_bytes(enc, fmt) == cert.public_key().public_bytes(enc, fmt)


def cert_facts(cert: x509.Certificate, file: Path | str) -> CertFacts:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)) + \
            tuple(f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    cn = cns[0].value if cns else None
    return CertFacts(
        file=str(file),
        subject=cert.subject.rfc4514_string(),
        common_name=cn if isinstance(cn, str) else None,
        sans=sans,
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


# ------------------------------------------------------------------- the rules
# Each returns every problem it finds, as text without the key and file it is about
# (``certs check`` shows those beside it; loading puts them in front).

def validity_problems(facts: CertFacts, now: datetime) -> list[str]:
    if facts.not_after <= now:
        return [f"expired on {facts.not_after:%Y-%m-%d %H:%M}Z"]
    if facts.not_before > now:
        return [f"not valid before {facts.not_before:%Y-%m-%d %H:%M}Z"]
    return []


def key_problems(key: object, chain: Sequence[x509.Certificate], cert_file: Path) -> list[str]:
    """The key must match the chain's first certificate, the leaf."""
    if key_matches(key, chain[0]):
        return []
    for index, cert in enumerate(chain[1:], start=1):
        if key_matches(key, cert):
            return [f"matches certificate [{index}] in {cert_file}, not the first: the chain "
                    "is in the wrong order (the leaf comes first)"]
    return [f"does not match the certificate in {cert_file}"]


def client_ca_problems(facts: CertFacts, pins: Sequence[str], now: datetime) -> list[str]:
    """A client CA must be a CA, valid now, and pinned when pins are configured."""
    problems = [] if facts.is_ca else [f"'{facts.subject}' is not a CA certificate"]
    problems += [f"CA '{facts.subject}' {p}" for p in validity_problems(facts, now)]
    if pins and facts.sha256 not in pins:
        problems.append(f"CA '{facts.subject}' (sha256 {facts.sha256}) is not listed in "
                        "tls.client_ca_sha256")
    return problems


def _refuse(key: str, path: Path | str, problems: list[str]) -> None:
    if problems:
        raise TLSMaterialError(f"{key} {path}: {problems[0]}")


# ------------------------------------------------------------------- loading

def load_material(tls: TLSConfig, *, now: datetime | None = None) -> TLSMaterial:
    """Read and fully validate the files of ``tls``; raise ``TLSMaterialError`` naming one."""
    now = now or datetime.now(timezone.utc)
    cert_pem, chain = read_pem_certs(tls.cert_file, "tls.cert_file")
    key_pem, key = read_private_key(tls.key_file)
    _refuse("tls.key_file", tls.key_file, key_problems(key, chain, tls.cert_file))
    server_chain = tuple(cert_facts(c, tls.cert_file) for c in chain)
    # Only the leaf's validity: chains often carry an expired cross-signed root that
    # clients skip (``certs check`` still reports it).
    _refuse("tls.cert_file", tls.cert_file, validity_problems(server_chain[0], now))

    ca_parts: list[bytes] = []
    client_cas: list[CertFacts] = []
    ca_certs: list[x509.Certificate] = []
    for path in tls.client_ca_files:
        _, certs = read_pem_certs(path, "tls.client_ca_files")
        for cert in certs:
            facts = cert_facts(cert, path)
            _refuse("tls.client_ca_files", path,
                    client_ca_problems(facts, tls.client_ca_sha256, now))
            client_cas.append(facts)
            ca_certs.append(cert)
            # Re-encode what was parsed: bundles carry comments (non-ASCII issuer names)
            # and other text that OpenSSL need not see.
            ca_parts.append(cert.public_bytes(serialization.Encoding.PEM))
    ca_pem = b"".join(ca_parts)
    digest = hashlib.sha256(cert_pem + b"\0" + key_pem + b"\0" + ca_pem).hexdigest()
    return TLSMaterial(cert_pem, key_pem, ca_pem, server_chain, tuple(client_cas), digest,
                       tuple(ca_certs))


def build_context(material: TLSMaterial, *, require_client_cert: bool,
                  context_class: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """A server context for exactly these bytes.  Never trusts the system's roots."""
    ctx = context_class(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SERVER_CIPHERS)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
                    | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE)
    # No tickets: a resumed session skips client-certificate verification, and a ticket
    # would let a client from a CA removed by a reload keep coming back.  (TLS 1.2
    # session-ID resumption stays within one context: the holder makes a new context,
    # with an empty session cache, at every swap.)
    ctx.num_tickets = 0
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain_from_bytes(ctx, material.cert_pem, material.key_pem,
                           material.server_chain[0].file if material.server_chain else "")
    ctx.load_verify_locations(cadata=material.ca_pem.decode("ascii"))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def _load_chain_from_bytes(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes,
                           cert_file: str) -> None:
    # ssl can only load a chain from files: write the validated bytes to private
    # temporary files (0600 in a 0700 directory) and remove them at once.
    with tempfile.TemporaryDirectory(prefix="sidecar-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise TLSMaterialError(f"tls.cert_file {cert_file}: refused by OpenSSL with "
                                   f"tls.key_file ({exc.reason})") from exc


def _read(path: Path, what: str) -> bytes:
    try:
        return read_file(path, PEM_MAX_BYTES)
    except FileNotFoundError as exc:
        raise TLSMaterialError(f"{what} {path}: file not found") from exc
    except OSError as exc:
        raise TLSMaterialError(f"{what} {path}: unreadable ({why_unreadable(exc)})") from exc
