"""`limits.max_connections`: established connections past the cap are refused in the
handshake, and a slot frees up when a connection closes."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from conftest import VERIFY_TOKEN


def _open(sidecar) -> ssl.SSLSocket:
    ctx = sidecar.pki.client_context(sidecar.pki.meta_client)
    raw = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _verify_get(tls: ssl.SSLSocket) -> bytes:
    path = f"/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=5"
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return tls.recv(4096)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connections_past_the_cap_are_refused(start_sidecar, loop):
    # A closed connection is released when the server notices (at worst the idle
    # timeout, here header_timeout_s = 1 s); keep that short for the test.
    sidecar = start_sidecar(loop=loop,
                            extra="limits: {max_connections: 2, header_timeout_s: 1}\n")
    first, second = _open(sidecar), _open(sidecar)
    assert _verify_get(first).startswith(b"HTTP/1.1 200")
    assert _verify_get(second).startswith(b"HTTP/1.1 200")
    # Refused before the server's first flight: no crypto is spent on it, so the
    # client's own handshake fails (refused after it, a TLS 1.3 client would only
    # notice at its first read).
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _open(sidecar)
    assert 'reason="too_many_connections"' in sidecar.metrics()
    assert "sidecar_open_connections 2.0" in sidecar.metrics()
    first.close()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            fourth = _open(sidecar)
        except (ssl.SSLError, OSError):
            time.sleep(0.1)
            continue
        try:
            if _verify_get(fourth).startswith(b"HTTP/1.1 200"):
                break
        except (ssl.SSLError, OSError):
            pass
        finally:
            fourth.close()
        time.sleep(0.1)
    else:
        pytest.fail("a closed connection did not free its slot")
    second.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_closed_connection_frees_its_slot_at_once(start_sidecar, loop):
    # One connection at a time, each kept alive and then closed by the client: the cap
    # is never reached, so none may be refused, and the gauge returns to 0 (it counted
    # closed connections until the garbage collector found their objects).
    sidecar = start_sidecar(loop=loop, extra="limits: {max_connections: 2}\n")
    for _ in range(30):
        tls = _open(sidecar)
        assert _verify_get(tls).startswith(b"HTTP/1.1 200")
        tls.close()
    assert "too_many_connections" not in sidecar.metrics()
    deadline = time.monotonic() + 5
    while "sidecar_open_connections 0.0" not in sidecar.metrics():
        assert time.monotonic() < deadline, sidecar.metrics()
        time.sleep(0.05)
