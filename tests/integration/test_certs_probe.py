"""`sidecar certs probe` against a real mTLS server (stdlib, in a thread, on 127.0.0.1).

The server requires a client certificate from its CA and answers Meta's verification
GET with the challenge when the token is "tok", else 403.  By default it speaks TLS 1.3,
where the client's handshake completes before the server has checked the client
certificate: the probe must still see the refusal.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.cli import main
from sidecar.config import META_CLIENT_NAME
from sidecar.tools.devcerts import CertAuthority

TOKEN = "tok"
SECRET_TOKEN = "sekrit-token-value-42"  # a wrong token that must never be printed


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # from another CA
    stranger_key: Path


@dataclass(frozen=True)
class Server:
    url: str
    pki: Pki


class _VerificationHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        query = parse_qs(urlsplit(self.path).query)
        ok = query.get("hub.mode") == ["subscribe"] and query.get("hub.verify_token") == [TOKEN]
        challenge = query.get("hub.challenge", [""])[0]
        body = challenge.encode() if ok and challenge else b"forbidden"
        self.send_response(200 if ok and challenge else 403)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _MTLSServer(ThreadingHTTPServer):
    """Handshakes in the per-connection thread, so a bad client never blocks accept()."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(("127.0.0.1", 0), _VerificationHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(5)
        tls = self.context.wrap_socket(request, server_side=True)
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are the point of these tests


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = CertAuthority("probe test CA"), CertAuthority("some other CA")
    (d / "ca.pem").write_bytes(ca.cert_pem)
    ca.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",),
             server=True).write(d / "server.pem", d / "server.key")
    ca.issue(META_CLIENT_NAME, dns_names=(META_CLIENT_NAME,)).write(d / "client.pem",
                                                                     d / "client.key")
    other.issue(META_CLIENT_NAME).write(d / "stranger.pem", d / "stranger.key")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
               d / "client.key", d / "stranger.pem", d / "stranger.key")


def _start(pki: Pki, max_version: ssl.TLSVersion) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = max_version
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = _MTLSServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Server(f"https://127.0.0.1:{server.server_address[1]}/webhooks/whatsapp", pki)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(pki: Pki) -> Iterator[Server]:
    yield from _start(pki, ssl.TLSVersion.TLSv1_3)


@pytest.fixture
def server_tls12(pki: Pki) -> Iterator[Server]:
    yield from _start(pki, ssl.TLSVersion.TLSv1_2)


def probe(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str]:
    code = main(["certs", "probe", url, "--timeout-s", "5", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def client_args(pki: Pki, *, ca: bool = True) -> list[str]:
    args = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    return args + (["--ca", str(pki.ca)] if ca else [])


def test_accepted_client_with_right_token(server: Server,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, *client_args(server.pki), "--verify-token", TOKEN)
    assert code == 0, out
    assert "TLSv1.3" in out and "cipher" in out and "CN=localhost" in out
    assert "verification  ok" in out and "result: OK" in out
    assert "hub.verify_token=***" in out and f"verify_token={TOKEN}" not in out


def test_accepted_client_without_token(server: Server,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, *client_args(server.pki))
    assert code == 0, out
    assert "accepted      yes" in out and "http status   403" in out


def test_json_report(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, *client_args(server.pki), "--verify-token", TOKEN,
                      "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["accepted"] is True and data["verification_ok"] is True
    assert data["protocol"] == "TLSv1.3" and data["http_status"] == 200
    assert data["server_chain"][0]["subject"] == "CN=localhost"
    assert data["client_cert"] == f"CN={META_CLIENT_NAME}"


def test_wrong_token_exits_1_and_is_never_printed(server: Server,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, *client_args(server.pki),
                      "--verify-token", SECRET_TOKEN)
    assert code == 1
    assert "403" in out and "result: FAILED" in out
    assert SECRET_TOKEN not in out
    code, out = probe(capsys, server.url, *client_args(server.pki),
                      "--verify-token", SECRET_TOKEN, "--json")
    assert code == 1 and SECRET_TOKEN not in out


def test_client_cert_from_another_ca_is_refused(server: Server,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, "--cert", str(server.pki.stranger_cert),
                      "--key", str(server.pki.stranger_key), "--ca", str(server.pki.ca),
                      "--verify-token", TOKEN)
    assert code == 1
    assert "refused" in out and "accepted      no" in out


def test_client_cert_from_another_ca_is_refused_tls12(
        server_tls12: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server_tls12.url, "--cert", str(server_tls12.pki.stranger_cert),
                      "--key", str(server_tls12.pki.stranger_key), "--ca",
                      str(server_tls12.pki.ca))
    assert code == 1
    assert "refused" in out


def test_accepted_over_tls12(server_tls12: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server_tls12.url, *client_args(server_tls12.pki),
                      "--verify-token", TOKEN)
    assert code == 0, out
    assert "TLSv1.2" in out


def test_no_client_cert_is_refused(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, "--ca", str(server.pki.ca))
    assert code == 1
    assert "refused" in out and "without a client certificate" in out


def test_untrusted_server_exits_1_with_reason(server: Server,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, server.url, *client_args(server.pki, ca=False))
    assert code == 1
    assert "server certificate not trusted" in out and "--ca" in out


def test_connection_refused_exits_1(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out = probe(capsys, f"https://127.0.0.1:{port}/x", *client_args(pki),
                      "--verify-token", SECRET_TOKEN)
    assert code == 1
    assert "cannot connect" in out and SECRET_TOKEN not in out


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/x", "ftp://h/x", "https:///nohost"])
def test_non_https_url_exits_2(url: str, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, url, *client_args(pki))
    assert code == 2
    assert out.startswith("sidecar: error: ") and out.count("\n") == 1


def test_cert_without_key_exits_2(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = probe(capsys, "https://127.0.0.1:1/x", "--cert", str(pki.client_cert))
    assert code == 2 and "--cert and --key" in out


def test_an_encrypted_client_key_is_one_line_not_a_passphrase_prompt(
        server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # OpenSSL's own prompt waits on the terminal for ever, past --timeout-s.
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(server.pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "client.enc.key"
    encrypted.write_bytes(key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    code, out = probe(capsys, server.url, "--cert", str(server.pki.client_cert),
                      "--key", str(encrypted), "--ca", str(server.pki.ca))
    assert code == 2
    assert out.strip() == (f"sidecar: error: --key {encrypted}: the private key is "
                           "encrypted; give an unencrypted one (no passphrase is asked for)")
