"""The listener's own limits (header deadline, header size, idle keep-alive, graceful
stop), on a real socket on 127.0.0.1 with plain HTTP; over TLS the same protocol runs
(tests/integration/test_slow_clients.py)."""

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


def test_partial_headers_get_408_at_the_header_deadline_despite_trickling():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nX-Slow: ")
        start = time.monotonic()
        answer = b""
        while time.monotonic() - start < 3:
            writer.write(b"a")
            try:
                answer = await asyncio.wait_for(reader.read(), 0.1)
                break
            except TimeoutError:
                continue
        elapsed = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert elapsed < LIMITS.header_timeout_s + 0.4, elapsed

    _run(test)


def test_connection_that_sends_nothing_is_closed_at_the_header_deadline():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        data, elapsed = await _read_all(reader, 3)
        assert data == b""
        assert LIMITS.header_timeout_s - 0.1 < elapsed < LIMITS.header_timeout_s + 0.4

    _run(test)


def test_idle_keepalive_lasts_keepalive_timeout_not_header_timeout():
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        await reader.readuntil(b"hello")
        data, elapsed = await _read_all(reader, 5)
        assert data == b""
        assert LIMITS.keepalive_timeout_s - 0.1 < elapsed < LIMITS.keepalive_timeout_s + 0.5

    _run(test)


@pytest.mark.parametrize("split", [False, True])
def test_headers_past_the_cap_get_431_and_a_close(split: bool):
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * (LIMITS.max_header_bytes * 4) + b"\r\n\r\n"
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
        head = b"POST /x HTTP/1.1\r\nContent-Length: 20000\r\nX-Pad: "
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
        for _ in range(2):  # a body that arrived with the headers is all read
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nsome")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"connection:" not in head.lower()
            assert await reader.readexactly(5) == b"hello"
        writer.close()

    _run(test)


def test_the_send_given_to_the_app_does_not_hold_its_request():
    # Holding the request's cycle (or its bound send) would make a reference cycle that
    # keeps every finished request, and through it its connection, alive until a full
    # garbage collection (measured: +16 MB after 5,000 new connections).
    held_cycle: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        cycle = receive.__self__
        held = [cell.cell_contents for cell in (send.__closure__ or ())]
        held_cycle.append(any(h is cycle or getattr(h, "__self__", None) is cycle
                              for h in held))
        await _hello(scope, receive, send)

    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()

    _run(test, app)
    assert held_cycle == [False]


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
    b"GET /x HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
    b"G\x00T /x HTTP/1.1\r\n\r\n",
], ids=["cl-and-te", "two-cl", "obs-fold", "nul-in-method"])
def test_ambiguous_or_malformed_requests_get_400_and_a_close(raw: bytes):
    async def test(port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        data, _ = await _read_all(reader, 3)
        assert data.startswith(b"HTTP/1.1 400"), data

    _run(test)


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_response_head_and_body_go_out_in_one_write_and_nothing_is_held_past_a_turn():
    from sidecar.server.listen import _ResponseWriter

    async def scenario() -> None:
        transport = _RecordingTransport()
        writer = _ResponseWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HEAD")
        writer.write(b"BODY")
        assert transport.writes == [b"HEADBODY"]
        writer.write(b"100 Continue")  # nothing follows in this turn
        assert transport.writes == [b"HEADBODY"]
        await asyncio.sleep(0)
        assert transport.writes == [b"HEADBODY", b"100 Continue"]
        writer.write(b"HEAD2")
        writer.close()  # flushes before closing
        assert transport.writes[-1] == b"HEAD2" and transport.closed

    asyncio.run(scenario())
