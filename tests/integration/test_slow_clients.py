"""Slow and abusive clients over real mTLS: cut off on time, valid traffic keeps flowing.

Small limits so the test is quick: headers must be complete within 1 s of a
request's first byte (or of the handshake), a body within 2 s; an idle keep-alive
connection is kept 5 s, so a slowloris client trickling header bytes is cut off by the
header limit, not the keep-alive one.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

from conftest import APP_SECRET
from sidecar.checks.signature import sign
from sidecar.tools.samples import sample_delivery
from sidecar.secret import Secret

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
KEEPALIVE_TIMEOUT_S = 5.0
SLACK_S = 1.0
LIMITS = (f"limits: {{header_timeout_s: {HEADER_TIMEOUT_S}, body_timeout_s: {BODY_TIMEOUT_S},"
          f" keepalive_timeout_s: {KEEPALIVE_TIMEOUT_S}}}\n")


def _connect(sidecar) -> ssl.SSLSocket:
    """A raw mTLS connection with Meta's client certificate; the handshake is complete."""
    ctx = sidecar.pki.client_context(sidecar.pki.meta_client)
    raw = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _timed_answer(conn: ssl.SSLSocket, wait_s: float) -> tuple[bytes | None, float]:
    """``_closed_or_answered`` and how long it took."""
    start = time.monotonic()
    answer = _closed_or_answered(conn, wait_s)
    return answer, time.monotonic() - start


def _closed_or_answered(conn: ssl.SSLSocket, wait_s: float) -> bytes | None:
    """Data the server sent (b"" when it closed), or None if it said nothing in wait_s."""
    conn.settimeout(wait_s)
    try:
        return conn.recv(65536)
    except (TimeoutError, socket.timeout):
        return None
    except (ssl.SSLError, OSError):
        return b""


class _ValidTraffic(threading.Thread):
    """Signed deliveries on fresh connections, in parallel with the abusive client."""

    def __init__(self, sidecar, label: str) -> None:
        super().__init__(daemon=True)
        self.sidecar, self.label = sidecar, label
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps(sample_delivery("messages", unique=f"{self.label}-{n}")).encode()
            try:
                self.statuses.append(self.sidecar.post(body).status_code)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))
            self.stop.wait(0.2)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=15)
        assert not self.is_alive()
        assert self.errors == []
        assert self.statuses and set(self.statuses) == {200}, self.statuses


def test_slowloris_is_cut_off_at_the_header_timeout(start_sidecar, sink):
    sidecar = start_sidecar(extra=LIMITS)
    traffic = _ValidTraffic(sidecar, "slowloris")
    traffic.start()
    conn = _connect(sidecar)
    try:
        start = time.monotonic()
        conn.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = None
        while time.monotonic() - start < KEEPALIVE_TIMEOUT_S + 3:
            try:
                conn.sendall(b"a")  # one header byte every 0.25 s, never finishing
            except (ssl.SSLError, OSError):
                answer = b""
                break
            answer = _closed_or_answered(conn, 0.25)
            if answer is not None:
                break
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    traffic.finish()
    assert answer is not None and (answer == b"" or answer.startswith(b"HTTP/1.1 4")), answer
    assert elapsed <= HEADER_TIMEOUT_S + SLACK_S, f"cut off after {elapsed:.2f}s"
    assert len(sink.wait_for(len(traffic.statuses), timeout_s=10)) == len(traffic.statuses)


def test_idle_connection_without_a_request_is_closed_at_the_header_timeout(start_sidecar):
    sidecar = start_sidecar(extra=LIMITS)
    conn = _connect(sidecar)
    try:
        answer, elapsed = _timed_answer(conn, KEEPALIVE_TIMEOUT_S + 3)
    finally:
        conn.close()
    assert answer == b""
    assert elapsed <= HEADER_TIMEOUT_S + SLACK_S, f"closed after {elapsed:.2f}s"


def test_idle_keepalive_connection_outlives_the_header_timeout(start_sidecar):
    """After a response, an idle connection waits keepalive_timeout_s for the next
    request (Meta reuses connections), not header_timeout_s; then it is closed."""
    sidecar = start_sidecar(extra=LIMITS)
    conn = _connect(sidecar)
    get = (b"GET /webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=test-verify-token"
           b"&hub.challenge=again HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    def answer() -> bytes:
        data = b""
        while not data.endswith(b"again"):
            chunk = _closed_or_answered(conn, 5)
            if not chunk:
                break
            data += chunk
        return data

    try:
        conn.sendall(get)
        assert answer().startswith(b"HTTP/1.1 200")
        assert _closed_or_answered(conn, HEADER_TIMEOUT_S + SLACK_S) is None  # still open
        conn.sendall(get)
        assert answer().startswith(b"HTTP/1.1 200")
        closed, elapsed = _timed_answer(conn, KEEPALIVE_TIMEOUT_S + 3)
    finally:
        conn.close()
    assert closed == b""
    assert KEEPALIVE_TIMEOUT_S - SLACK_S <= elapsed <= KEEPALIVE_TIMEOUT_S + SLACK_S, elapsed


def test_stalled_body_gets_408_or_closed_and_nothing_is_forwarded(start_sidecar, sink):
    sidecar = start_sidecar(extra=LIMITS)
    traffic = _ValidTraffic(sidecar, "stalled")
    body = json.dumps(sample_delivery("messages", unique="stalled-body")).encode()
    head = (f"POST /webhooks/whatsapp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: 1000\r\n"
            f"X-Hub-Signature-256: {sign(Secret(APP_SECRET), body)}\r\n\r\n").encode()
    conn = _connect(sidecar)
    try:
        traffic.start()
        conn.sendall(head + body[:10])
        answer, elapsed = _timed_answer(conn, BODY_TIMEOUT_S + 5)
    finally:
        conn.close()
    traffic.finish()
    assert answer is not None and (answer == b"" or answer.startswith(b"HTTP/1.1 408")), answer
    assert elapsed <= BODY_TIMEOUT_S + SLACK_S, f"cut off after {elapsed:.2f}s"
    delivered = sink.wait_for(len(traffic.statuses), timeout_s=10)
    assert len(delivered) == len(traffic.statuses)
    assert all("stalled-body" not in json.dumps(e) for e in delivered)
    assert f"sidecar_events_spooled_total {float(len(traffic.statuses))}" in sidecar.metrics()


def test_oversized_headers_get_4xx_or_closed(start_sidecar, sink):
    sidecar = start_sidecar(extra=LIMITS)
    conn = _connect(sidecar)
    answer: bytes | None
    try:
        request = (b"GET /webhooks/whatsapp?hub.mode=subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"X-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n")
        try:
            conn.sendall(request)
        except (ssl.SSLError, OSError):
            answer = b""
        else:
            answer = _closed_or_answered(conn, 5)
    finally:
        conn.close()
    assert answer is not None and (answer == b"" or answer.startswith(b"HTTP/1.1 4")), answer
    with sidecar.client() as c:  # the listener is fine afterwards
        r = c.get(sidecar.url, params={"hub.mode": "subscribe",
                                       "hub.verify_token": "test-verify-token",
                                       "hub.challenge": "ok"})
    assert r.status_code == 200 and r.text == "ok"
    assert sink.requests == []
