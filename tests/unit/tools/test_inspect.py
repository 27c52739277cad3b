"""``check_tls``: every problem of the configured TLS files, collected, with a fixed clock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sidecar.config import Config, load_config
from sidecar.tools.devcerts import CertAuthority, IssuedCert
from sidecar.tools.inspect import EXPIRING, INVALID, OK, check_tls
from sidecar.tls.material import cert_facts, read_pem_certs


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority("inspect test CA")


@pytest.fixture(scope="module")
def server(ca: CertAuthority) -> IssuedCert:
    return ca.issue("localhost", dns_names=("localhost",), server=True)


def _config(tmp_path: Path, ca: CertAuthority, server: IssuedCert, *, key: bytes | None = None,
            ca_files: str = "ca.pem", extra: str = "") -> Config:
    (tmp_path / "server.pem").write_bytes(server.cert_pem)
    (tmp_path / "server.key").write_bytes(key or server.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        f"tls: {{cert_file: server.pem, key_file: server.key, client_ca_files: [{ca_files}]"
        f"{extra}}}\n"
        'meta: {app_secrets: ["s"], verify_token: "t"}\n'
        'upstream: {url: "http://127.0.0.1:9/"}\n', encoding="utf-8")
    return load_config(path, env={})


def _leaf_not_after(tmp_path: Path) -> datetime:
    _, chain = read_pem_certs(tmp_path / "server.pem", "tls.cert_file")
    return cert_facts(chain[0], tmp_path / "server.pem").not_after


def test_good_files_are_ok(tmp_path: Path, ca: CertAuthority, server: IssuedCert) -> None:
    report = check_tls(_config(tmp_path, ca, server), warn_days=30)
    assert (report.status, report.exit_code) == (OK, 0)
    assert [item.kind for item in report.items] == ["server_cert", "server_key", "client_ca"]
    assert report.items[1].extra["matches_leaf"] is True
    assert report.counts == {OK: 3, EXPIRING: 0, INVALID: 0}
    json.dumps(report.to_json())  # JSON-serialisable as is


def test_rsa_files_are_ok_and_a_key_of_the_other_kind_is_not(
        tmp_path: Path, server: IssuedCert) -> None:
    rsa_ca = CertAuthority("inspect test RSA CA", key_type="rsa")
    rsa_server = rsa_ca.issue("localhost", dns_names=("localhost",), server=True)
    assert b"BEGIN PRIVATE KEY" in rsa_server.key_pem
    report = check_tls(_config(tmp_path, rsa_ca, rsa_server), warn_days=30)
    assert (report.status, report.exit_code) == (OK, 0)
    _, chain = read_pem_certs(tmp_path / "server.pem", "tls.cert_file")
    assert chain[0].public_key().key_size == 2048  # type: ignore[union-attr]

    mismatched = check_tls(_config(tmp_path, rsa_ca, rsa_server, key=server.key_pem),
                           warn_days=30)
    assert (mismatched.status, mismatched.exit_code) == (INVALID, 2)
    assert mismatched.items[1].extra["matches_leaf"] is False


def test_expiry_within_warn_days_is_expiring(tmp_path: Path, ca: CertAuthority,
                                             server: IssuedCert) -> None:
    config = _config(tmp_path, ca, server)
    now = _leaf_not_after(tmp_path) - timedelta(days=10)
    report = check_tls(config, warn_days=30, now=now)
    assert (report.status, report.exit_code) == (EXPIRING, 1)
    assert report.items[0].warnings == ["expires in 10.0 days (within --warn-days 30)"]
    assert check_tls(config, warn_days=5, now=now).status == OK


def test_expired_leaf_is_invalid(tmp_path: Path, ca: CertAuthority, server: IssuedCert) -> None:
    config = _config(tmp_path, ca, server)
    now = _leaf_not_after(tmp_path) + timedelta(seconds=1)
    report = check_tls(config, warn_days=30, now=now)
    assert (report.status, report.exit_code) == (INVALID, 2)
    assert report.items[0].problems[0].startswith("expired on ")


def test_every_problem_is_collected(tmp_path: Path, ca: CertAuthority,
                                    server: IssuedCert) -> None:
    other_key = ca.issue("someone else").key_pem
    config = _config(tmp_path, ca, server, key=other_key,
                     extra=f', client_ca_sha256: ["{"ab" * 32}"]')
    report = check_tls(config, warn_days=30)
    assert report.status == INVALID
    key_item, ca_item = report.items[1], report.items[2]
    assert key_item.extra["matches_leaf"] is False
    assert "does not match the certificate" in key_item.problems[0]
    assert ca_item.extra["pinned"] is False
    assert "not listed in tls.client_ca_sha256" in ca_item.problems[0]


def test_missing_meta_ca_gets_a_download_hint(tmp_path: Path, ca: CertAuthority,
                                              server: IssuedCert) -> None:
    config = _config(tmp_path, ca, server, ca_files="meta-outbound-api-ca-2025-12.pem")
    report = check_tls(config, warn_days=30)
    assert report.status == INVALID
    assert "file not found" in report.items[-1].problems[0]
    assert "certs/README.md" in report.items[-1].problems[0]


@pytest.mark.parametrize(("allowed", "warning"), [
    ('["*.example.com", "client.example.com"]', "wildcard"),
    ('["Client.Webhooks.FBClientCerts.com"]', "upper-case"),
], ids=["wildcard", "upper-case"])
def test_client_name_that_cannot_match_is_warned_about(
        tmp_path: Path, ca: CertAuthority, server: IssuedCert, allowed: str,
        warning: str) -> None:
    config = _config(tmp_path, ca, server, extra=f", allowed_client_names: {allowed}")
    names = check_tls(config, warn_days=30).client_names
    assert names[0].warning is not None and warning in names[0].warning
    assert all(name.warning is None for name in names[1:])  # the plain name is fine
