"""The listener's own limits (header deadline, header size, idle keep-alive, unread
bodies, HTTP/1.1 only, graceful stop): Hypercorn on a real socket on 127.0.0.1 with
plain HTTP; over TLS the same protocol runs (tests/integration/test_slow_clients.py,
test_hostile_requests.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.server.listen import Listener, ListenerLimits, bind_socket

LIMITS = ListenerLimits(header_timeout_s=0.5, keepalive_timeout_s=1.5, max_header_bytes=4096,
                        handshake_timeout_s=1.0, graceful_timeout_s=2.0)
GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    delay = 0.6 if scope["path"] == "/slow" else 0.0
    await asyncio.sleep(delay)
    if scope["path"] == "/read":
        while (await receive()).get("more_body", False):
            pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _run(test: Callable[[int, asyncio.Event], Awaitable[None]], app: Any = _hello) -> None:
    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        stop = asyncio.Event()
        served = asyncio.create_task(Listener(app, sock, limits=LIMITS, backlog=16)
                                     .serve(stop))
        try:
            await asyncio.wait_for(test(port, stop), 10)
        finally:
            stop.set()
            await asyncio.wait_for(served, 10)
            sock.close()

    asyncio.run(main())


async def _read_all(reader: asyncio.StreamReader, wait_s: float) -> tuple[bytes, float]:
    """Everything until the server closes, and how long that took."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), wait_s)
    return data, time.monotonic() - start


def test_request_is_answered_and_connection_kept_alive():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(GET)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"date: " in head.lower()
            assert b"server:" not in head.lower()
            assert await reader.readexactly(5) == b"hello"
        writer.close()

    _run(test)


def test_partial_headers_are_cut_off_at_the_header_deadline_despite_trickling():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nX-Slow: ")
        start = time.monotonic()
        answer = None
        while time.monotonic() - start < 3:
            writer.write(b"a")
            try:
                answer = await asyncio.wait_for(reader.read(), 0.1)
                break
            except TimeoutError:
                continue
        elapsed = time.monotonic() - start
        # h11 cannot answer a head it has not parsed: the connection is closed.
        assert answer == b"", answer
        assert elapsed < LIMITS.header_timeout_s + 0.4, elapsed

    _run(test)


def test_a_request_after_a_response_gets_its_own_header_deadline():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await reader.readuntil(b"hello")
        await asyncio.sleep(LIMITS.header_timeout_s + 0.2)  # idle: keep-alive applies
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n")  # then a head that never ends
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - start < LIMITS.header_timeout_s + 0.4

    _run(test)


def test_connection_that_sends_nothing_is_closed_at_the_header_deadline():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        data, elapsed = await _read_all(reader, 3)
        assert data == b""
        assert LIMITS.header_timeout_s - 0.1 < elapsed < LIMITS.header_timeout_s + 0.4

    _run(test)


async def _answered_then_closed_at_the_keepalive_timeout(reader: asyncio.StreamReader,
                                                         writer: asyncio.StreamWriter) -> None:
    writer.write(GET)
    await reader.readuntil(b"hello")
    data, elapsed = await _read_all(reader, 5)
    assert data == b""
    assert LIMITS.keepalive_timeout_s - 0.1 < elapsed < LIMITS.keepalive_timeout_s + 0.5


def test_idle_keepalive_lasts_keepalive_timeout_not_header_timeout():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _answered_then_closed_at_the_keepalive_timeout(reader, writer)

    _run(test)


def test_each_request_starts_the_idle_keepalive_wait_again():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # each wait shorter than the keep-alive timeout
            writer.write(GET)
            await reader.readuntil(b"hello")
            await asyncio.sleep(LIMITS.keepalive_timeout_s * 0.6)
        await _answered_then_closed_at_the_keepalive_timeout(reader, writer)

    _run(test)


def test_stop_closes_a_connection_idle_after_its_responses_at_once():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(GET)
            await reader.readuntil(b"hello")
        stop.set()
        data, elapsed = await _read_all(reader, 1)
        assert data == b"" and elapsed < 0.5

    _run(test)


def test_a_request_pipelined_behind_the_answer_during_which_a_stop_came_is_served():
    # The stop lands while the first answer is being sent, before Hypercorn itself drains:
    # the connection goes idle with the next request already read, and that request is
    # answered (closing the connection), not cut off.
    stops: list[asyncio.Event] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        if scope["path"] == "/stop":
            stops[0].set()
        await send({"type": "http.response.body", "body": b"hello"})

    async def test(port: int, stop: asyncio.Event) -> None:
        stops.append(stop)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stop HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        data, _ = await _read_all(reader, 3)
        assert data.count(b"HTTP/1.1 200") == 2, data
        assert data.lower().count(b"connection: close") == 1, data

    _run(test, app)


@pytest.mark.parametrize("split", [False, True])
def test_headers_past_the_cap_get_431_and_a_close(split: bool):
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (LIMITS.max_header_bytes * 4) + b"\r\n\r\n"
        if split:  # arriving in small pieces, none past the cap on its own
            for i in range(0, len(big), 1000):
                writer.write(big[i:i + 1000])
                await writer.drain()
        else:
            writer.write(big)
        data, _ = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 431"), data

    _run(test)


def test_headers_just_under_the_cap_with_a_body_in_the_same_read_are_fine():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\nX-Pad: "
        head += b"p" * (LIMITS.max_header_bytes - len(head) - 8) + b"\r\n\r\n"
        writer.write(head + b"b" * 20000)  # the body alone is five times the header cap
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        writer.close()

    _run(test)


def test_answer_before_the_body_is_read_closes_the_connection():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The app answers without reading the body; the client would trickle the rest.
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nsome")
        data, elapsed = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello"), data
        # ... and says so, so no client sends a next request on it.
        assert b"\r\nconnection: close\r\n" in data.lower(), data
        assert elapsed < LIMITS.header_timeout_s  # closed after the answer, not on a timer

    _run(test)


def test_answer_after_the_whole_body_keeps_the_connection():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # the app read the whole body
            writer.write(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nsome")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"connection:" not in head.lower()
            assert await reader.readexactly(5) == b"hello"
        writer.close()

    _run(test)


def test_stop_lets_a_request_in_progress_finish_then_closes():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        idle_reader, _ = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.2)
        stop.set()
        data, _ = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello"), data
        assert b"connection: close" in data.lower()
        assert await asyncio.wait_for(idle_reader.read(), 1) == b""  # idle: closed at once
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)  # no longer accepting

    _run(test)


@pytest.mark.parametrize("raw", [
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"G\x00T /x HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\n\r\n",
], ids=["cl-and-te", "two-cl", "nul-in-method", "no-host"])
def test_ambiguous_or_malformed_requests_get_400_and_a_close(raw: bytes):
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        data, _ = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 400"), data

    _run(test)


def test_unread_body_behind_a_slow_answer_does_not_hang_the_connection():
    # Plain Hypercorn 0.18 keeps this connection open for good: the app answers without
    # reading, Hypercorn's bounded queue of body messages is full, and the request can
    # never end.  Here it is closed after the answer.
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n")
        sent = 0
        try:
            while sent < 4_000_000:
                writer.write(b"x" * 65536)
                sent += 65536
                await asyncio.wait_for(writer.drain(), 2)
        except (TimeoutError, ConnectionError):
            pass  # the server stopped reading (or closed): that is the point
        data, _ = await _read_all(reader, 5)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello"), data[:200]
        assert b"\r\nconnection: close\r\n" in data.lower()

    _run(test)


@pytest.mark.parametrize("raw, status", [
    (b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", b"505"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505"),  # the HTTP/2 preface: no switch
    (b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     b"501"),
    (b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
     b"501"),
], ids=["http2-line", "http2-preface", "te-gzip-chunked", "te-identity-chunked"])
def test_what_is_not_http11_is_refused_and_closed(raw: bytes, status: bytes):
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        data, _ = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 " + status), data
        assert b"\r\nconnection: close\r\n" in data.lower()

    _run(test)


def test_h2c_upgrade_is_ignored_not_switched():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 200"), head  # an HTTP/1.1 answer, not 101
        assert await reader.readexactly(5) == b"hello"
        writer.close()

    _run(test)


def test_an_answer_the_client_does_not_take_ends_the_request_at_the_send_deadline():
    """A client that stops reading (a pipelining flood, a stalled reader) makes
    Hypercorn's writes wait for ever; the guard ends the request instead, and Hypercorn
    then closes the connection (over TLS the close is bounded by asyncio's SSL shutdown
    timeout)."""
    from sidecar.server.guard import RequestGuard

    async def scenario() -> None:
        sent: list[str] = []

        async def stuck_send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "http.response.body":
                await asyncio.sleep(60)  # the transport's buffer never drains

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        guard = RequestGuard(_hello, stopping=asyncio.Event(), max_header_bytes=4096,
                             send_timeout_s=0.2)
        scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/x",
                 "raw_path": b"/x", "query_string": b"", "headers": [(b"host", b"t")]}
        start = time.monotonic()
        await asyncio.wait_for(guard(scope, receive, stuck_send), 5)
        assert time.monotonic() - start < 1.0
        assert sent == ["http.response.start", "http.response.body"]

    asyncio.run(scenario())


def test_a_websocket_upgrade_is_refused_before_the_handshake():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        data, _ = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 403"), data  # not 101, and not a 500

    _run(test)
