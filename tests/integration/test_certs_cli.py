"""`sidecar certs dev` and `sidecar certs check`, in process, on real files."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from sidecar.cli import main
from sidecar.config import META_CLIENT_NAME
from sidecar.tools.devcerts import CertAuthority

DEV_FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")

WriteConfig = Callable[..., Path]


@pytest.fixture
def ca() -> CertAuthority:
    return CertAuthority("test CA")


@pytest.fixture
def write_config(tmp_path: Path, ca: CertAuthority) -> WriteConfig:
    """Write server.pem/key and ca.pem (unless overridden) and a config naming them."""

    def write(*, server: bytes | None = None, key: bytes | None = None,
              ca_files: tuple[str, ...] = ("ca.pem",), pins: tuple[str, ...] = ()) -> Path:
        issued = ca.issue("localhost", dns_names=("localhost",), server=True)
        (tmp_path / "server.pem").write_bytes(server or issued.cert_pem)
        (tmp_path / "server.key").write_bytes(key or issued.key_pem)
        (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
        cas = ", ".join(ca_files)
        pin_line = f", client_ca_sha256: [{', '.join(pins)}]" if pins else ""
        path = tmp_path / "sidecar.yaml"
        path.write_text(
            f"tls: {{cert_file: server.pem, key_file: server.key, client_ca_files: [{cas}]"
            f"{pin_line}}}\n"
            'meta: {app_secrets: ["s"], verify_token: "t"}\n'
            'upstream: {url: "http://127.0.0.1:9/"}\n')
        return path

    return write


def check(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, str]:
    code = main(["certs", "check", "-c", str(config), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def check_json(capsys: pytest.CaptureFixture[str], config: Path,
               *extra: str) -> tuple[int, dict[str, object]]:
    code = main(["certs", "check", "-c", str(config), "--json", *extra])
    out, _ = capsys.readouterr()
    return code, json.loads(out)


# --------------------------------------------------------------------------- certs dev

def test_dev_writes_six_parsable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "dev"
    assert main(["certs", "dev", "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for name in DEV_FILES:
        assert str(out_dir / name) in out
    assert "tls.client_ca_files" in out
    for name in ("ca.pem", "server.pem", "client.pem"):
        x509.load_pem_x509_certificate((out_dir / name).read_bytes())
    client = x509.load_pem_x509_certificate((out_dir / "client.pem").read_bytes())
    assert client.subject.rfc4514_string() == f"CN={META_CLIENT_NAME}"


def test_dev_refuses_existing_files_without_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "dev"
    out_dir.mkdir()
    (out_dir / "ca.pem").write_text("keep me")
    assert main(["certs", "dev", "-o", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert (out_dir / "ca.pem").read_text() == "keep me"
    assert main(["certs", "dev", "-o", str(out_dir), "--force"]) == 0
    assert (out_dir / "ca.pem").read_text() != "keep me"


def test_dev_accepts_an_empty_existing_dir(tmp_path: Path) -> None:
    assert main(["certs", "dev", "-o", str(tmp_path)]) == 0


# --------------------------------------------------------------------------- certs check

def test_check_good_config_exits_0(write_config: WriteConfig,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, write_config())
    assert code == 0
    assert "INVALID" not in out and "EXPIRING" not in out
    assert "CN=localhost" in out and "DNS:localhost" in out and "CN=test CA" in out
    assert "chain: leaf only" in out
    assert "summary: OK" in out


def test_check_expiring_exits_1_until_warn_days_shrinks(
        write_config: WriteConfig, ca: CertAuthority,
        capsys: pytest.CaptureFixture[str]) -> None:
    soon = ca.issue("localhost", server=True,
                    not_after=datetime.now(timezone.utc) + timedelta(days=5))
    config = write_config(server=soon.cert_pem, key=soon.key_pem)
    code, out = check(capsys, config, "--warn-days", "30")
    assert code == 1
    assert "EXPIRING" in out and "summary: EXPIRING" in out
    code, out = check(capsys, config, "--warn-days", "2")
    assert code == 0


def test_check_key_mismatch_exits_2(write_config: WriteConfig, ca: CertAuthority,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = ca.issue("other", server=True)
    code, out = check(capsys, write_config(key=other.key_pem))
    assert code == 2
    assert "does not match" in out


def test_check_expired_cert_exits_2(write_config: WriteConfig, ca: CertAuthority,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(timezone.utc)
    old = ca.issue("localhost", server=True, not_before=now - timedelta(days=10),
                   not_after=now - timedelta(days=1))
    code, out = check(capsys, write_config(server=old.cert_pem, key=old.key_pem))
    assert code == 2
    assert "expired on" in out


def test_check_not_yet_valid_cert_exits_2(write_config: WriteConfig, ca: CertAuthority,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(timezone.utc)
    future = ca.issue("localhost", server=True, not_before=now + timedelta(days=1),
                      not_after=now + timedelta(days=100))
    code, out = check(capsys, write_config(server=future.cert_pem, key=future.key_pem))
    assert code == 2
    assert "not valid before" in out


def test_check_leaf_in_client_ca_files_exits_2(write_config: WriteConfig, tmp_path: Path,
                                               ca: CertAuthority,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ca.issue(META_CLIENT_NAME).write(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    code, out = check(capsys, write_config(ca_files=("ca.pem", "leaf.pem")))
    assert code == 2
    assert "is not a CA certificate" in out


def test_check_missing_meta_ca_exits_2_with_hint(write_config: WriteConfig,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(ca_files=("ca.pem", "meta-outbound-api-ca-2025-12.pem"))
    code, out = check(capsys, config)
    assert code == 2
    assert "meta-outbound-api-ca-2025-12.pem" in out and "file not found" in out
    assert "mTLS for webhooks documentation" in out and "certs/README.md" in out


def test_check_missing_other_file_has_no_meta_hint(write_config: WriteConfig,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, write_config(ca_files=("nope.pem",)))
    assert code == 2
    assert "file not found" in out and "Meta" not in out


def test_check_pin_mismatch_exits_2(write_config: WriteConfig,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, write_config(pins=("ab" * 32,)))
    assert code == 2
    assert "not listed in tls.client_ca_sha256" in out


def test_check_pin_match_exits_0(write_config: WriteConfig, ca: CertAuthority,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import hashes
    pin = ca.cert.fingerprint(hashes.SHA256()).hex()
    code, data = check_json(capsys, write_config(pins=(pin,)))
    assert code == 0
    cas = [i for i in data["items"] if i["kind"] == "client_ca"]  # type: ignore[union-attr]
    assert cas and all(i["pinned"] is True for i in cas)


def test_check_chain_with_intermediate_verifies(write_config: WriteConfig, ca: CertAuthority,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    leaf = ca.issue("localhost", server=True)
    code, out = check(capsys, write_config(server=leaf.cert_pem + ca.cert_pem, key=leaf.key_pem))
    assert code == 0, out
    assert "chain: 2 certificates" in out


def test_check_broken_chain_exits_2(write_config: WriteConfig, ca: CertAuthority,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    leaf = ca.issue("localhost", server=True)
    stranger = CertAuthority("test CA")  # same name, different key: the signature must fail
    code, out = check(capsys, write_config(server=leaf.cert_pem + stranger.cert_pem,
                                           key=leaf.key_pem))
    assert code == 2
    assert "chain: signature does not verify" in out


def test_check_garbage_pem_exits_2(write_config: WriteConfig,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, write_config(server=b"not a pem\n", key=b"nor this\n"))
    assert code == 2
    assert "no valid PEM certificate" in out and "not an unencrypted PEM private key" in out


def test_check_bad_config_exits_2_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, tmp_path / "missing.yaml")
    assert code == 2
    assert out.startswith("sidecar: error: ") and out.count("\n") == 1


def test_check_json_has_the_fields(write_config: WriteConfig,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, data = check_json(capsys, write_config(ca_files=("ca.pem", "meta-outbound-api-ca.pem")))
    assert code == 2
    assert data["ok"] is False and data["status"] == "invalid" and data["warn_days"] == 30
    items = data["items"]
    assert isinstance(items, list)
    assert [i["kind"] for i in items] == ["server_cert", "server_key", "client_ca", "client_ca"]
    server = items[0]
    for key in ("file", "status", "problems", "subject", "sans", "issuer", "serial",
                "not_before", "not_after", "days_left", "sha256"):
        assert key in server
    assert server["status"] == "ok" and server["sans"] == ["DNS:localhost"]
    assert datetime.fromisoformat(server["not_after"]) > datetime.now(timezone.utc)
    assert isinstance(server["days_left"], float) and server["days_left"] > 800
    assert items[2]["is_ca"] is True and items[2]["status"] == "ok"
    assert items[3]["status"] == "invalid" and "certs/README.md" in items[3]["problems"][0]


def test_check_reports_implausible_allowed_names(write_config: WriteConfig,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config()
    text = config.read_text().replace(
        "client_ca_files: [ca.pem]",
        f'client_ca_files: [ca.pem], allowed_client_names: [{META_CLIENT_NAME}, "*.fb.com", '
        '"client webhooks"]')
    config.write_text(text)
    code, data = check_json(capsys, config)
    assert code == 0  # informational only
    names = {n["name"]: n["warning"] for n in data["allowed_client_names"]}  # type: ignore
    assert names[META_CLIENT_NAME] is None
    assert "wildcard" in names["*.fb.com"]
    assert "not a plausible DNS name" in names["client webhooks"]


def test_check_shows_what_does_not_print_escaped(capsys: pytest.CaptureFixture[str],
                                                 write_config: WriteConfig,
                                                 tmp_path: Path) -> None:
    # A CA bundle comes from elsewhere: a subject carrying a terminal escape must not
    # drive the operator's terminal.
    config = write_config(ca_files=("ca.pem", "odd-ca.pem"))
    (tmp_path / "odd-ca.pem").write_bytes(CertAuthority("Evil\x1b[31mRED\x1b[0m CA").cert_pem)
    _, out = check(capsys, config)
    assert "\x1b" not in out
    assert "CN=Evil\\x1b[31mRED\\x1b[0m CA" in out


def test_check_an_expired_root_at_the_chains_end_is_a_warning_as_serve_judges_it(
        write_config: WriteConfig, ca: CertAuthority,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The same CA, as an expired self-signed copy sent after the leaf (an expired
    # cross-signed root, as chains often carry): serve accepts it, so certs check must not
    # call the deployment invalid (exit 2) - a warning, exit 1.
    from cryptography.hazmat.primitives import hashes, serialization

    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    original = x509.load_pem_x509_certificate(ca.cert_pem)
    now = datetime.now(timezone.utc)
    expired = (x509.CertificateBuilder().subject_name(original.subject)
               .issuer_name(original.subject).public_key(original.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=400)).not_valid_after(now - timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    leaf = ca.issue("localhost", dns_names=("localhost",), server=True)
    config = write_config(server=leaf.cert_pem + expired.public_bytes(serialization.Encoding.PEM),
                          key=leaf.key_pem)
    code, out = check(capsys, config)
    assert code == 1, out
    assert "only the leaf's validity counts" in out
    assert main(["config", "check", "-c", str(config)]) == 0  # and serve agrees


def test_check_a_chain_in_the_wrong_order_says_so(write_config: WriteConfig, ca: CertAuthority,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    leaf = ca.issue("localhost", server=True)
    config = write_config(server=ca.cert_pem + leaf.cert_pem, key=leaf.key_pem)
    code, out = check(capsys, config)
    assert code == 2
    assert "matches certificate [1]" in out and "the chain is in the wrong order" in out


def test_check_a_leaf_alone_names_the_issuer_clients_need(write_config: WriteConfig,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    code, out = check(capsys, write_config())
    assert code == 0
    assert "chain: leaf only; clients must have its issuer 'CN=" in out
