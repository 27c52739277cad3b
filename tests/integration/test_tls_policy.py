"""TLS policy of the public listener, seen from real clients.

Each refusal has a positive control: the very same client context completes a
handshake against a permissive throwaway server, so the refusal is the sidecar's,
not a client that could not offer the old protocol or cipher in the first place.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
import trustme

from conftest import META_CN

LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"


def _legacy_client(sidecar, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client (Meta's certificate) that offers exactly one old protocol version."""
    ctx = sidecar.pki.client_context(sidecar.pki.meta_client)
    ctx.set_ciphers(LEGACY_CIPHERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ctx.minimum_version = version
            ctx.maximum_version = version
        except (ValueError, ssl.SSLError):
            pytest.skip(f"this OpenSSL cannot offer {version.name}")
    return ctx


def _handshake(ctx: ssl.SSLContext, port: int) -> tuple[str | None, str | None]:
    """(protocol version, cipher) of a completed handshake; raises when refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            cipher = conn.cipher()
            return conn.version(), cipher[0] if cipher else None


@contextmanager
def _permissive_server(sidecar, version: ssl.TLSVersion | None = None,
                       ciphers: str = LEGACY_CIPHERS) -> Iterator[int]:
    """A throwaway server with the same certificate that accepts old protocols/ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ctx.minimum_version = version or ssl.TLSVersion.MINIMUM_SUPPORTED
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot serve the old protocol for the control")
    pki_dir = sidecar.pki.dir
    ctx.load_cert_chain(str(pki_dir / "server.pem"), str(pki_dir / "server.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve_one() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_0_and_1_1_are_refused(start_sidecar, sink, version):
    sidecar = start_sidecar()
    tls_version = getattr(ssl.TLSVersion, version)
    client = _legacy_client(sidecar, tls_version)
    with _permissive_server(sidecar, tls_version) as control_port:
        try:
            negotiated, _ = _handshake(client, control_port)
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL will not negotiate {version} even at SECLEVEL=0: {exc}")
    assert negotiated == version.replace("_", ".").replace("TLSv1.0", "TLSv1")

    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(client, sidecar.port)
    assert 'sidecar_tls_handshake_failures_total{reason="protocol"} 1.0' in sidecar.metrics()
    assert sink.requests == []


def _use_rsa_server_cert(pki) -> None:
    """Static-RSA suites need an RSA server key (trustme's default is ECDSA)."""
    leaf = pki.server_ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    leaf.cert_chain_pems[0].write_to_path(str(pki.dir / "server.pem"))
    leaf.private_key_pem.write_to_path(str(pki.dir / "server.key"))


def test_tls_1_2_without_forward_secrecy_is_refused(start_sidecar, pki):
    _use_rsa_server_cert(pki)
    sidecar = start_sidecar()
    client = sidecar.pki.client_context(sidecar.pki.meta_client)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("AES128-GCM-SHA256")  # static RSA key exchange: no forward secrecy
    with _permissive_server(sidecar, ciphers="AES128-GCM-SHA256") as control_port:
        assert _handshake(client, control_port) == ("TLSv1.2", "AES128-GCM-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(client, sidecar.port)


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_tls_1_2_with_ecdhe_and_tls_1_3_are_accepted(start_sidecar, pki, key_type):
    if key_type == "rsa":
        _use_rsa_server_cert(pki)
    sidecar = start_sidecar()
    tls12 = sidecar.pki.client_context(sidecar.pki.meta_client)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher = _handshake(tls12, sidecar.port)
    assert version == "TLSv1.2" and cipher is not None and cipher.startswith("ECDHE-")
    version, cipher = _handshake(sidecar.pki.client_context(sidecar.pki.meta_client),
                                 sidecar.port)
    assert version == "TLSv1.3"


def test_no_compression_and_no_session_tickets_on_the_wire(start_sidecar):
    sidecar = start_sidecar()
    client = sidecar.pki.client_context(sidecar.pki.meta_client)
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            conn.settimeout(5)
            assert conn.recv(100).startswith(b"HTTP/1.1 404")
            assert conn.compression() is None
            session = conn.session
    # TLS 1.3 tickets arrive after the handshake; none means no resumption around a reload.
    assert session is None or not session.has_ticket


def test_tls12_session_is_not_resumed_once_the_client_certificate_has_expired(start_sidecar):
    """A resumed TLS 1.2 session skips OpenSSL's chain check, validity included, so the
    identity hook refuses a resumption whose certificate has expired since the session
    was made, as a full handshake would."""
    sidecar = start_sidecar()
    pki = sidecar.pki
    not_after = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
    short_lived = pki.client_pair("short", pki.client_ca, common_name=META_CN,
                                  not_after=not_after)
    client = pki.client_context(short_lived)
    client.maximum_version = ssl.TLSVersion.TLSv1_2

    def request(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool, bytes]:
        """(session, resumed?, the answer's first bytes: b"" when the server hung up)."""
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as raw:
            # In an abbreviated handshake the client finishes first, so a refusal shows
            # as the server hanging up on the request (or as an error, whichever comes).
            with client.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as conn:
                try:
                    conn.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answer = conn.recv(100)
                except (ssl.SSLError, ConnectionError):
                    answer = b""
                return conn.session, conn.session_reused, answer

    session, resumed, answer = request(None)
    assert not resumed and answer.startswith(b"HTTP/1.1 404")
    session, resumed, answer = request(session)
    assert resumed and answer.startswith(b"HTTP/1.1 404")  # still valid: resuming is fine
    time.sleep(max(0.0, not_after.timestamp() + 1.1 - time.time()))
    try:
        _, resumed, answer = request(session)
    except (ssl.SSLError, ConnectionError):
        resumed, answer = True, b""
    assert answer == b"", "a session of an expired certificate was resumed and answered"
    assert 'sidecar_tls_handshake_failures_total{reason="untrusted_certificate"} 1.0' in \
        sidecar.metrics()
    assert "certificate has expired (resumed session)" in sidecar.log()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(None)  # and a full handshake is refused by OpenSSL itself
