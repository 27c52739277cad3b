"""What an outside review sent, over real mTLS, and what the sidecar must do with it.

Each request here was accepted (or grew the process without bound) when the listeners
ran uvicorn's protocol; SPEC §2 says how each is refused or bounded.  Memory is judged
by the server process's RSS (``/proc/PID/status``), with generous margins; a flood stops
early once it has made its point either way, so the old behaviour cannot take the
machine down with it.
"""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

from conftest import APP_SECRET, VERIFY_TOKEN
from sidecar.checks.signature import sign
from sidecar.secret import Secret
from sidecar.tools.samples import sample_delivery

PATH = "/webhooks/whatsapp"
GROWTH_LIMIT_MB = 64  # the whole process may grow this much under a flood, no more
FLOOD_MB = 300  # what a flood sends at most (the old code grew 2.7 GB from 24 s of it)
BODY = json.dumps(sample_delivery("messages", unique="hostile")).encode()
SIGNATURE = sign(Secret(APP_SECRET), BODY)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _connect(sidecar, client_pem="meta") -> ssl.SSLSocket:
    pem = sidecar.pki.meta_client if client_pem == "meta" else client_pem
    ctx = sidecar.pki.client_context(pem)
    raw = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _exchange(sidecar, raw: bytes, wait_s: float = 5.0) -> bytes:
    """Send ``raw`` on a fresh connection; everything the server sent until it closed
    (or said nothing more for a second)."""
    conn = _connect(sidecar)
    try:
        conn.sendall(raw)
        conn.settimeout(1.0)
        data = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        conn.close()


def _post_head(path: str = PATH, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{extra}").encode()


def _nothing_stored(sidecar, sink) -> None:
    time.sleep(0.3)
    assert sink.requests == []
    assert "sidecar_events_spooled_total 0.0" in sidecar.metrics()


def _flood(sidecar, conn: ssl.SSLSocket, chunk: bytes, baseline_mb: float) -> float:
    """Write ``chunk`` over and over without reading, until the server stops reading
    (nothing goes out for 3 s), closes, ``FLOOD_MB`` went out, or the process has grown
    past the limit; the peak growth seen.  (Once it has closed a connection the server
    may go on reading and dropping what the client sends for a while, as nginx's
    lingering close does: on uvloop, until its SSL shutdown timeout.)"""
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    conn.setblocking(False)
    sent, peak, last_progress = 0, 0.0, time.monotonic()
    next_check = 0
    while sent < FLOOD_MB * 1024 * 1024:
        try:
            sent += conn.send(chunk)
            last_progress = time.monotonic()
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            if time.monotonic() - last_progress > 3:
                break
            time.sleep(0.02)
        except (ssl.SSLError, OSError):
            break
        if sent >= next_check:
            next_check = sent + 1024 * 1024
            peak = max(peak, _rss_mb(pid) - baseline_mb)
            if peak > GROWTH_LIMIT_MB:
                break
    time.sleep(0.5)
    return max(peak, _rss_mb(pid) - baseline_mb)


def _answer_so_far(conn: ssl.SSLSocket) -> bytes:
    conn.setblocking(True)
    conn.settimeout(2)
    try:
        return conn.recv(65536)
    except (TimeoutError, socket.timeout, ssl.SSLError, OSError):
        return b""


def _still_serving(sidecar) -> None:
    with sidecar.client() as c:
        r = c.get(sidecar.url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                       "hub.challenge": "still-here"})
    assert r.status_code == 200 and r.text == "still-here"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_pipelining_flood_without_reading_is_bounded(start_sidecar, loop):
    # Onboarding mode: no client certificate needed, as in the review.
    sidecar = start_sidecar(loop=loop, client_auth="optional")
    assert sidecar.proc is not None
    baseline = _rss_mb(sidecar.proc.pid)
    conn = _connect(sidecar, client_pem=None)
    try:
        growth = _flood(sidecar, conn, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" * 2000, baseline)
        answers = _answer_so_far(conn)
    finally:
        conn.close()
    assert growth < GROWTH_LIMIT_MB, f"grew {growth:.0f} MB"
    assert answers == b"" or answers.startswith(b"HTTP/1.1 404"), answers[:100]  # in order
    _still_serving(sidecar)
    assert "Traceback" not in sidecar.log()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_huge_trailer_section_is_cut_off(start_sidecar, sink, loop):
    sidecar = start_sidecar(loop=loop)
    assert sidecar.proc is not None
    baseline = _rss_mb(sidecar.proc.pid)
    conn = _connect(sidecar)
    try:
        conn.sendall(_post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                      "Transfer-Encoding: chunked\r\n\r\n")
                     + b"2\r\n{}\r\n0\r\n")
        growth = _flood(sidecar, conn, (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 60, baseline)
        answer = _answer_so_far(conn)
    finally:
        conn.close()
    assert growth < GROWTH_LIMIT_MB, f"grew {growth:.0f} MB"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    _still_serving(sidecar)
    assert "Traceback" not in sidecar.log()
    _nothing_stored(sidecar, sink)


def _bytes_read(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_goes_on_sending_after_a_413_is_cut_off(start_sidecar, sink, loop):
    """413, read no further than the limit: after the answer the server closes, and
    what the client goes on sending is not read (uvloop would read and drop it for its
    30 s TLS shutdown timeout; the TLS holder refuses data after close_notify)."""
    sidecar = start_sidecar(loop=loop, extra="limits: {max_body_bytes: 2048}\n")
    assert sidecar.proc is not None
    conn = _connect(sidecar)
    try:
        before = _bytes_read(sidecar.proc.pid)
        conn.sendall(_post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                      "Content-Length: 1000000000\r\n\r\n"))
        conn.setblocking(False)
        start = last = time.monotonic()
        while time.monotonic() - start < 6 and time.monotonic() - last < 2:
            try:
                conn.send(b"x" * 65536)
                last = time.monotonic()
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.01)
            except (ssl.SSLError, OSError):
                break
        read_mb = (_bytes_read(sidecar.proc.pid) - before) / 1024 / 1024
        answer = _answer_so_far(conn)
    finally:
        conn.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert read_mb < 16, f"the server read {read_mb:.0f} MB of a refused body"
    _nothing_stored(sidecar, sink)


def test_a_signature_sent_only_as_a_trailer_is_401(start_sidecar, sink):
    sidecar = start_sidecar()
    answer = _exchange(sidecar, _post_head(extra="Transfer-Encoding: chunked\r\n\r\n")
                       + b"%x\r\n%s\r\n0\r\nX-Hub-Signature-256: %s\r\n\r\n"
                       % (len(BODY), BODY, SIGNATURE.encode()))
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    _nothing_stored(sidecar, sink)


@pytest.mark.parametrize("coding", ["gzip, chunked", "identity, chunked"])
def test_a_transfer_coding_other_than_chunked_alone_is_refused(start_sidecar, sink, coding):
    sidecar = start_sidecar()
    answer = _exchange(sidecar, _post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                                 f"Transfer-Encoding: {coding}\r\n\r\n")
                       + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    assert answer.startswith((b"HTTP/1.1 501", b"HTTP/1.1 400")), answer[:200]
    _nothing_stored(sidecar, sink)


def test_an_http_2_0_request_line_is_refused(start_sidecar, sink):
    sidecar = start_sidecar()
    answer = _exchange(sidecar, (f"POST {PATH} HTTP/2.0\r\nHost: 127.0.0.1\r\n"
                                 f"Content-Length: {len(BODY)}\r\n"
                                 f"X-Hub-Signature-256: {SIGNATURE}\r\n\r\n").encode() + BODY)
    assert answer.startswith((b"HTTP/1.1 505", b"HTTP/1.1 400")), answer[:200]
    _nothing_stored(sidecar, sink)


def test_a_later_http_1_minor_version_is_served_as_http_1_1(start_sidecar):
    # RFC 9110 §2.5: same major version, so HTTP/1.1 semantics (it was a 505).
    sidecar = start_sidecar()
    answer = _exchange(sidecar, (f"GET {PATH}?hub.mode=subscribe&hub.verify_token="
                                 f"{VERIFY_TOKEN}&hub.challenge=12 HTTP/1.2\r\n"
                                 "Host: a\r\nConnection: close\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n12"), answer


def test_no_switch_to_http2_by_upgrade_or_preface(start_sidecar):
    sidecar = start_sidecar()
    verify = f"{PATH}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=h1"
    upgrade = _exchange(sidecar, (f"GET {verify} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                  "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n").encode(),
                        wait_s=2)
    assert upgrade.startswith(b"HTTP/1.1 200") and upgrade.endswith(b"h1"), upgrade[:200]
    preface = _exchange(sidecar, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert preface.startswith((b"HTTP/1.1 505", b"HTTP/1.1 400")), preface[:200]


def test_a_percent_encoded_path_is_404(start_sidecar, sink):
    sidecar = start_sidecar()
    answer = _exchange(sidecar, _post_head("/webhooks%2Fwhatsapp",
                                           f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                           f"Content-Length: {len(BODY)}\r\n\r\n") + BODY)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    _nothing_stored(sidecar, sink)


def test_two_signature_headers_are_401_even_when_both_are_right(start_sidecar, sink):
    sidecar = start_sidecar()
    answer = _exchange(sidecar, _post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                                 f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                                 f"Content-Length: {len(BODY)}\r\n\r\n")
                       + BODY)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    _nothing_stored(sidecar, sink)


def test_whitespace_inside_the_signature_is_401(start_sidecar, sink):
    sidecar = start_sidecar()
    spaced = SIGNATURE.replace("sha256=", "sha256= ")
    answer = _exchange(sidecar, _post_head(extra=f"X-Hub-Signature-256: {spaced}\r\n"
                                                 f"Content-Length: {len(BODY)}\r\n\r\n")
                       + BODY)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    _nothing_stored(sidecar, sink)


def test_the_same_delivery_done_right_is_accepted(start_sidecar, sink):
    """The control: the requests above differ from this one only in what they break."""
    sidecar = start_sidecar()
    answer = _exchange(sidecar, _post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                                 "Connection: close\r\n"
                                                 f"Content-Length: {len(BODY)}\r\n\r\n")
                       + BODY)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert len(sink.wait_for(1, timeout_s=10)) == 1


def test_both_content_length_and_transfer_encoding_are_400(start_sidecar, sink):
    # h11 would frame this by its chunked coding and ignore the length: the ambiguity
    # request smuggling lives on (RFC 9112 §6.3 lets a server refuse it).
    sidecar = start_sidecar()
    answer = _exchange(sidecar, _post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                                                 f"Content-Length: {len(BODY)}\r\n"
                                                 "Transfer-Encoding: chunked\r\n\r\n")
                       + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"connection: close" in answer.lower()
    _nothing_stored(sidecar, sink)


@pytest.mark.parametrize("byte", [b"\x01", b"\x08", b"\x1f", b"\x7f"])
def test_a_control_byte_in_a_header_value_is_400(start_sidecar, sink, byte):
    sidecar = start_sidecar()
    head = _post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                            f"Content-Length: {len(BODY)}\r\n")
    answer = _exchange(sidecar, head + b"X-Note: a" + byte + b"b\r\n\r\n" + BODY)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    _nothing_stored(sidecar, sink)


@pytest.mark.parametrize("method", ["post", "Post"])
def test_a_method_is_case_sensitive(start_sidecar, sink, method):
    # Hypercorn upper-cases the method; `post` is not POST (RFC 9110 §9.1).
    sidecar = start_sidecar()
    head = _post_head(extra=f"X-Hub-Signature-256: {SIGNATURE}\r\n"
                            f"Content-Length: {len(BODY)}\r\n\r\n")
    answer = _exchange(sidecar, method.encode() + head[len(b"POST"):] + BODY)
    assert answer.startswith(b"HTTP/1.1 405"), answer[:200]
    _nothing_stored(sidecar, sink)


def test_leftover_bytes_on_a_closing_connection_start_no_header_clock(start_sidecar):
    # A 404 closes the connection; the start of a pipelined request sent with it must
    # not arm the header deadline (a spurious refusal logged, a timer keeping the
    # connection's objects alive for header_timeout_s).
    sidecar = start_sidecar(extra="limits: {header_timeout_s: 1}\n")
    conn = _connect(sidecar)
    try:
        conn.sendall(b"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
                     b"helloGET /x HTTP/1.1\r\n")
        conn.settimeout(5)
        assert conn.recv(65536).startswith(b"HTTP/1.1 404")
        time.sleep(2.5)  # the client keeps its end open past header_timeout_s
    finally:
        conn.close()
    log = sidecar.log()
    assert "header_timeout" not in log and "never awaited" not in log, log[-2000:]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("close", ["close_notify", "half_close"])
def test_a_client_that_closes_before_its_answer_leaves_no_traceback(start_sidecar, sink,
                                                                    loop, close):
    # asyncio's TLS transport raises AttributeError for a write after the client's close
    # (not the ConnectionError Hypercorn expects): "Error in ASGI Framework" with a
    # traceback, at error level, once per such request.
    sidecar = start_sidecar(loop=loop)
    get = (f"GET {PATH}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=7 "
           "HTTP/1.1\r\nHost: a\r\n\r\n").encode()
    post = (f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n"
            f"X-Hub-Signature-256: {SIGNATURE}\r\n\r\n").encode() + BODY
    # The head alone, waiting for 100 Continue: the app's first read would send it.
    expecting = (f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n"
                 f"X-Hub-Signature-256: {SIGNATURE}\r\nExpect: 100-continue\r\n\r\n"
                 ).encode()
    for request in (get, post, expecting) * 3:
        conn = _connect(sidecar)
        conn.sendall(request)
        try:
            if close == "close_notify":
                conn.unwrap().close()
            else:
                conn.shutdown(socket.SHUT_WR)
                time.sleep(0.1)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()
    sink.wait_for(1, timeout_s=10)  # the delivery was stored all the same
    time.sleep(0.5)
    log = sidecar.log()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]


def test_every_refusal_before_the_app_is_counted_by_outcome(start_sidecar):
    # A slowloris or a malformed-request flood shows in sidecar_requests_total, not
    # only in the log.
    sidecar = start_sidecar(extra="limits: {header_timeout_s: 1}\n")
    assert _exchange(sidecar, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n").startswith(
        b"HTTP/1.1 404")
    assert _exchange(sidecar, f"PUT {PATH} HTTP/1.1\r\nHost: a\r\n\r\n".encode()).startswith(
        b"HTTP/1.1 405")
    assert _exchange(sidecar, f"GET {PATH} HTTP/2.0\r\nHost: a\r\n\r\n".encode()).startswith(
        b"HTTP/1.1 505")
    assert _exchange(sidecar, (f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode()
                     ).startswith(b"HTTP/1.1 400")
    assert _exchange(sidecar, (f"POST {PATH} HTTP/1.1\r\nHost: a\r\n"
                               "Transfer-Encoding: gzip, chunked\r\n\r\n").encode()
                     ).startswith(b"HTTP/1.1 501")
    slow = _connect(sidecar)
    try:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1")  # and nothing more
        slow.settimeout(5)
        assert slow.recv(1024) == b""  # closed by the server at the header deadline
    finally:
        slow.close()
    metrics = sidecar.metrics()
    for outcome in ("not_found", "method_not_allowed", "http_version", "malformed_request",
                    "not_implemented", "header_timeout"):
        assert f'sidecar_requests_total{{outcome="{outcome}"}} 1.0' in metrics, outcome


def _head_then(sidecar, head: bytes, body: bytes | None) -> bytes:
    """Send ``head``; the first answer; then, if it was ``100 Continue``, ``body`` and
    the answer after it."""
    conn = _connect(sidecar)
    try:
        conn.sendall(head)
        conn.settimeout(5)
        first = conn.recv(65536)
        if first.startswith(b"HTTP/1.1 100") and body is not None:
            conn.sendall(body)
            while b"\r\n\r\n" not in first.split(b"\r\n\r\n", 1)[1]:
                first += conn.recv(65536)
        return first
    finally:
        conn.close()


def test_100_continue_only_when_the_body_is_wanted(start_sidecar, sink):
    # A head that decides the answer gets the answer, not an invitation to upload the
    # body first (Hypercorn sent 100 Continue for every such head).
    sidecar = start_sidecar(extra="limits: {max_body_bytes: 4096}\n")
    expect = "Expect: 100-continue\r\n"
    too_big = (f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n"
               f"X-Hub-Signature-256: {SIGNATURE}\r\n{expect}\r\n").encode()
    assert _head_then(sidecar, too_big, None).startswith(b"HTTP/1.1 413")
    elsewhere = f"POST /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n{expect}\r\n".encode()
    assert _head_then(sidecar, elsewhere, None).startswith(b"HTTP/1.1 404")
    right = (f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n"
             f"X-Hub-Signature-256: {SIGNATURE}\r\n{expect}\r\n").encode()
    answer = _head_then(sidecar, right, BODY)
    assert answer.startswith(b"HTTP/1.1 100 ") and b"\r\n\r\nHTTP/1.1 200 " in answer, answer
    sink.wait_for(1, timeout_s=10)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_gone_mid_body_is_a_disconnect_not_a_malformed_request(start_sidecar, loop):
    sidecar = start_sidecar(loop=loop)
    conn = _connect(sidecar)
    conn.sendall((f"POST {PATH} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n"
                  f"X-Hub-Signature-256: {SIGNATURE}\r\n\r\n").encode() + BODY[:10])
    time.sleep(0.3)
    conn.close()
    deadline = time.monotonic() + 5
    while 'outcome="client_disconnect"} 1.0' not in sidecar.metrics():
        assert time.monotonic() < deadline, sidecar.metrics()
        time.sleep(0.1)
    time.sleep(0.3)
    assert "malformed_request" not in sidecar.metrics()
