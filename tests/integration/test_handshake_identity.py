"""Client-certificate admission happens in the TLS handshake, on every supported loop."""

from __future__ import annotations

import json
import socket
import ssl
import time

import httpx
import pytest

from conftest import META_CN


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_only_meta_certificate_from_trusted_ca_is_admitted(start_sidecar, sink, loop):
    sidecar = start_sidecar(loop=loop)
    pki = sidecar.pki

    with sidecar.client() as c:
        ok = c.get(sidecar.url, params={"hub.mode": "subscribe", "hub.verify_token":
                                        "test-verify-token", "hub.challenge": "42"})
    assert ok.status_code == 200 and ok.text == "42"

    refused = {
        "no client certificate": None,
        "untrusted CA, Meta's CN": pki.rogue_client,
        "trusted CA, other name": pki.other_name_client,
    }
    for label, pem in refused.items():
        with pytest.raises((httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError),
                           ) as info:
            with sidecar.client(pem) as c:
                c.get(sidecar.url, params={"hub.mode": "subscribe",
                                           "hub.verify_token": "test-verify-token",
                                           "hub.challenge": "42"})
        assert info.value is not None, label

    metrics = sidecar.metrics()
    assert 'sidecar_tls_handshake_failures_total{reason="name_not_allowed"} 1.0' in metrics
    assert 'sidecar_tls_handshake_failures_total{reason="no_certificate"} 1.0' in metrics
    assert sink.requests == []


def test_dns_san_matches_when_cn_differs(start_sidecar, pki):
    sidecar = start_sidecar()
    san_only = pki.client_pair("san", pki.client_ca, META_CN, common_name="something-else")
    with sidecar.client(san_only) as c:
        r = c.get(sidecar.url, params={"hub.mode": "subscribe",
                                       "hub.verify_token": "test-verify-token",
                                       "hub.challenge": "7"})
    assert r.status_code == 200


def _refused_lines(sidecar) -> list[dict]:
    return [json.loads(line) for line in sidecar.log().splitlines()
            if '"tls.handshake_refused"' in line]


def test_refused_handshakes_are_logged_with_what_was_presented(start_sidecar):
    """An operator sees why a client was refused and, for a trusted certificate with a
    name not allowed, which names it carried: the way to tell Meta's name change or a
    typo in allowed_client_names from an attack.  Lines are throttled per reason (anyone
    can cause them); the metric counts every refusal."""
    sidecar = start_sidecar()
    pki = sidecar.pki
    for pem in (pki.other_name_client, pki.other_name_client, pki.other_name_client,
                pki.rogue_client):
        with pytest.raises((httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError)):
            with sidecar.client(pem) as c:
                c.get(sidecar.url)

    deadline = time.monotonic() + 5
    while len({line["reason"] for line in _refused_lines(sidecar)}) < 2:
        assert time.monotonic() < deadline, sidecar.log()
        time.sleep(0.05)
    lines = _refused_lines(sidecar)
    (name,) = [line for line in lines if line["reason"] == "name_not_allowed"]
    assert name["level"] == "warning"
    assert name["common_names"] == ["evil.example.com"] and name["dns_names"] == []
    (untrusted,) = [line for line in lines if line["reason"] == "untrusted_certificate"]
    assert untrusted["level"] == "info"
    assert untrusted["error"] == "unable to get local issuer certificate"
    assert ('sidecar_tls_handshake_failures_total{reason="name_not_allowed"} 3.0'
            in sidecar.metrics())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_a_refused_handshake_tells_the_client_why(start_sidecar, loop, version):
    # OpenSSL's alert (certificate required, unknown CA) reaches the client: the event
    # loop's transport closed without sending it, so a client saw only an EOF or a reset.
    sidecar = start_sidecar(loop=loop)
    pki = sidecar.pki
    expected = {None: ("CERTIFICATE_REQUIRED" if version == "TLSv1_3"
                       else "HANDSHAKE_FAILURE"),
                pki.rogue_client: "UNKNOWN_CA"}
    for client_pem, alert in expected.items():
        ctx = pki.client_context(client_pem)
        ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
        with pytest.raises(ssl.SSLError) as caught:
            raw = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # TLS 1.3: seen here
                tls.recv(100)
        assert alert in str(caught.value) and "ALERT" in str(caught.value), caught.value


def test_plain_http_on_the_tls_port_is_told_so(start_sidecar):
    sidecar = start_sidecar()
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as raw:
        raw.sendall(b"GET /webhooks/whatsapp HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = b""
        while not answer.endswith(b"(mutual TLS).\n") and (chunk := raw.recv(4096)):
            answer += chunk  # (the server then waits for the client's close)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"\r\n\r\nThis port speaks HTTPS only (mutual TLS).\n")
    assert 'sidecar_tls_handshake_failures_total{reason="plain_http"} 1.0' in sidecar.metrics()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_refused_handshake_frees_its_slot_though_the_client_only_reads(start_sidecar, loop):
    # A client told "certificate required" by an alert reads it and closes, sending
    # nothing more: its slot used to stay taken until the collector found the
    # connection's objects, and a good client was refused too_many_connections.
    sidecar = start_sidecar(loop=loop,
                            extra="limits: {max_connections: 2, header_timeout_s: 1}\n")
    pki = sidecar.pki
    for _ in range(6):
        raw = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
        try:
            with pki.client_context(None).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.recv(100)  # TLS 1.3: the handshake completed here; the alert follows
        except (ssl.SSLError, OSError):
            pass
        time.sleep(0.2)
    deadline = time.monotonic() + 6
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
            with pki.client_context(pki.meta_client).wrap_socket(
                    raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                if tls.recv(100).startswith(b"HTTP/1.1 404"):
                    break
        except (ssl.SSLError, OSError):
            pass
        assert time.monotonic() < deadline, sidecar.metrics()
        time.sleep(0.2)
    while "sidecar_open_connections 0.0" not in sidecar.metrics():
        assert time.monotonic() < deadline, sidecar.metrics()
        time.sleep(0.1)
