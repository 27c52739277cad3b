"""Each way loading the TLS files refuses, and that ``certs check`` reports the same
problem in the same words (one set of rules: ``sidecar.tls.material``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.config import TLSConfig, load_config
from sidecar.errors import TLSMaterialError
from sidecar.tls.material import load_material
from sidecar.tools.devcerts import CertAuthority
from sidecar.tools.inspect import check_tls



def _write(tmp_path: Path, *, pins: str = "") -> TLSConfig:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "tls: {cert_file: server.pem, key_file: server.key, client_ca_files: [ca.pem]"
        f"{pins}}}\n"
        'meta: {app_secrets: ["s"], verify_token: "t"}\n'
        'upstream: {url: "http://127.0.0.1:9/"}\n', encoding="utf-8")
    return load_config(config, env={}).tls


@pytest.fixture
def files(tmp_path: Path) -> Path:
    ca = CertAuthority("rules CA")
    server = ca.issue("localhost", dns_names=("localhost",), server=True)
    (tmp_path / "server.pem").write_bytes(server.cert_pem)
    (tmp_path / "server.key").write_bytes(server.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    return tmp_path


def _other_key(d: Path) -> None:
    (d / "server.key").write_bytes(CertAuthority("x").issue("localhost").key_pem)


def _leaf_as_ca(d: Path) -> None:
    (d / "ca.pem").write_bytes((d / "server.pem").read_bytes())


def _short_lived_ca(d: Path) -> None:
    (d / "ca.pem").write_bytes(CertAuthority("short CA", valid_days=1).cert_pem)


Setup = Callable[[Path], None]
CASES: list[tuple[str, Setup, timedelta, str, str, str]] = [
    # (name, setup, how far from now to check, key, file, the problem's words)
    ("key of another certificate", _other_key, timedelta(0), "tls.key_file", "server.key",
     "does not match the certificate in"),
    ("leaf expired", lambda d: None, timedelta(days=900), "tls.cert_file", "server.pem",
     "expired on "),
    ("leaf not valid yet", lambda d: None, -timedelta(days=1), "tls.cert_file",
     "server.pem", "not valid before "),
    ("a client CA that is a leaf", _leaf_as_ca, timedelta(0), "tls.client_ca_files", "ca.pem",
     "is not a CA certificate"),
    ("client CA expired", _short_lived_ca, timedelta(days=2), "tls.client_ca_files",
     "ca.pem", "CA 'CN=short CA' expired on "),
]


@pytest.mark.parametrize("name, setup, shift, key, file, words", CASES,
                         ids=[c[0] for c in CASES])
def test_loading_refuses_with_the_words_certs_check_reports(
        files: Path, name: str, setup: Setup, shift: timedelta, key: str, file: str,
        words: str) -> None:
    now = datetime.now(timezone.utc) + shift
    setup(files)
    tls = _write(files)
    with pytest.raises(TLSMaterialError) as refused:
        load_material(tls, now=now)
    message = str(refused.value)
    assert message.startswith(f"{key} {files / file}: ") and words in message
    reported = [p for item in check_tls(load_config(files / "sidecar.yaml", env={}),
                                        warn_days=0, now=now).items for p in item.problems]
    assert message.split(": ", 1)[1] in reported


def test_a_client_ca_not_valid_yet_is_refused(files: Path) -> None:
    # A CA that cannot verify anything yet would refuse every client: a renewal that
    # swaps one in too early keeps the old material serving instead.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "future CA")])
    future = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(datetime.now(timezone.utc) + timedelta(days=1))
              .not_valid_after(datetime.now(timezone.utc) + timedelta(days=365))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(key, hashes.SHA256()))
    (files / "ca.pem").write_bytes(future.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(TLSMaterialError, match="tls.client_ca_files .*CA 'CN=future CA' not "
                                               "valid before"):
        load_material(_write(files))


def test_an_unpinned_client_ca_is_refused(files: Path) -> None:
    tls = _write(files, pins=", client_ca_sha256: [" + "ab" * 32 + "]")
    with pytest.raises(TLSMaterialError, match="is not listed in tls.client_ca_sha256"):
        load_material(tls)


@pytest.mark.parametrize("what, content, words", [
    ("server.pem", b"not a certificate", "tls.cert_file .*: no valid PEM certificate"),
    ("server.key", b"not a key", "tls.key_file .*: not an unencrypted PEM private key"),
    ("ca.pem", b"", "tls.client_ca_files .*: no valid PEM certificate"),
])
def test_an_unreadable_file_is_refused_naming_its_key(files: Path, what: str, content: bytes,
                                                      words: str) -> None:
    (files / what).write_bytes(content)
    with pytest.raises(TLSMaterialError, match=words):
        load_material(_write(files))


def test_a_missing_file_is_refused_naming_its_key(files: Path) -> None:
    tls = _write(files)
    (files / "server.pem").unlink()
    with pytest.raises(TLSMaterialError, match="tls.cert_file .*: file not found"):
        load_material(tls)


def test_a_fifo_in_place_of_a_key_is_refused_at_once(files: Path) -> None:
    tls = _write(files)
    (files / "server.key").unlink()
    os.mkfifo(files / "server.key")  # read, it would block until something wrote to it
    with pytest.raises(TLSMaterialError, match=r"tls.key_file .*: unreadable \(not a regular file\)"):
        load_material(tls)
