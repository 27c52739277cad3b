"""The client pair of ``certs probe`` and ``send-test``: loaded, or one line saying why."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from sidecar.errors import TLSMaterialError
from sidecar.tls.client_pair import load_client_pair


def _pair(tmp_path: Path) -> tuple[Path, Path, trustme.LeafCert]:
    leaf = trustme.CA().issue_cert("client.webhooks.fbclientcerts.com")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key, leaf


def test_a_pair_loads(tmp_path: Path) -> None:
    cert, key, _ = _pair(tmp_path)
    load_client_pair(ssl.create_default_context(), cert, key)


def test_an_encrypted_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    # Without this, OpenSSL asks for a passphrase on the terminal and waits for ever,
    # past the command's own timeout.
    cert, key, leaf = _pair(tmp_path)
    private = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    key.write_bytes(private.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSMaterialError) as refused:
        load_client_pair(ssl.create_default_context(), cert, key)
    assert str(refused.value) == (f"--key {key}: the private key is encrypted; give an "
                                  "unencrypted one (no passphrase is asked for)")


def test_a_key_of_another_certificate_is_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    cert, _, _ = _pair(tmp_path)
    _, other_key, _ = _pair(tmp_path / "other")
    with pytest.raises(TLSMaterialError, match=r"^--cert .* / --key .*: cannot load the "
                                               r"client pair \(KEY_VALUES_MISMATCH\)$"):
        load_client_pair(ssl.create_default_context(), cert, other_key)
