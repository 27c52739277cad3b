"""The upstream HTTP/1.1 pool (h11 framing) against real asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from sidecar.delivery.http1 import HTTP1Pool
from sidecar.errors import UpstreamUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []

    async def __aenter__(self) -> Server:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events?x=1"


def keep_alive(response: bytes, server_box: list[Server]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            server_box[0].requests.append(await read_request(reader))
            writer.write(response)
            await writer.drain()
    return handler


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_posts_and_reuses_one_connection() -> None:
    async def main() -> None:
        box: list[Server] = []
        async with Server(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            for i in range(5):
                r = await pool.post(b'{"n":%d}' % i, {"content-type": "application/json"})
                assert r.status == 200
            await pool.aclose()
        assert s.connections == 1 and len(s.requests) == 5
        head, body = s.requests[0]
        assert head.startswith(b"POST /events?x=1 HTTP/1.1\r\n")
        assert b"content-type: application/json" in head and body == b'{"n":0}'
    run(main())


def test_chunked_and_close_delimited_and_error_statuses() -> None:
    async def main() -> None:
        box: list[Server] = []
        chunked = (b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
                   b"4\r\nbusy\r\n0\r\n\r\n")
        async with Server(keep_alive(chunked, box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            for _ in range(2):
                r = await pool.post(b"{}", {})
                assert r.status == 503 and r.headers["retry-after"] == "7"
            assert s.connections == 1  # the chunked body was consumed: reusable
            await pool.aclose()

        async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                                  ) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nwhatever")
            await writer.drain()
        async with Server(close_delimited) as s:
            pool = HTTP1Pool(s.url, timeout_s=5)
            assert (await pool.post(b"{}", {})).status == 200
            assert (await pool.post(b"{}", {})).status == 200
            assert s.connections == 2
            await pool.aclose()
    run(main())


def test_idle_connection_closed_by_server_is_retried_once() -> None:
    async def main() -> None:
        async def one_per_connection(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            # ... then close without saying so (no "Connection: close")
        async with Server(one_per_connection) as s:
            pool = HTTP1Pool(s.url, timeout_s=5)
            assert (await pool.post(b"{}", {})).status == 200
            await asyncio.sleep(0.05)
            assert (await pool.post(b"{}", {})).status == 200
            assert s.connections == 2
            await pool.aclose()
    run(main())


def test_failures_are_upstream_unavailable() -> None:
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead_port = probe.getsockname()[1]
        pool = HTTP1Pool(f"http://127.0.0.1:{dead_port}/", timeout_s=2)
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await pool.post(b"{}", {})

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(5)
        async with Server(silent) as s:
            pool = HTTP1Pool(s.url, timeout_s=0.2)
            with pytest.raises(UpstreamUnavailable, match="timed out"):
                await pool.post(b"{}", {})

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"SPDY/9 banana\r\n\r\n")
            await writer.drain()
        async with Server(garbage) as s:
            pool = HTTP1Pool(s.url, timeout_s=2)
            with pytest.raises(UpstreamUnavailable, match="malformed"):
                await pool.post(b"{}", {})

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            await writer.drain()
        async with Server(hang_up) as s:
            pool = HTTP1Pool(s.url, timeout_s=2)
            with pytest.raises(UpstreamUnavailable, match="mid-response"):
                await pool.post(b"{}", {})
    run(main())


def test_never_more_connections_than_allowed() -> None:
    async def main() -> None:
        box: list[Server] = []
        in_flight = 0
        peak = 0

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal in_flight, peak
            while True:
                await read_request(reader)
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.02)
                in_flight -= 1
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        async with Server(slow) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5, max_connections=3)
            results = await asyncio.gather(*(pool.post(b"{}", {}) for _ in range(12)))
            assert {r.status for r in results} == {204}
            assert peak <= 3 and s.connections <= 3
            await pool.aclose()
    run(main())


def test_informational_responses_before_the_final_one_are_skipped() -> None:
    """RFC 9110 §15.2: a client must parse 1xx responses even when it did not ask for
    them. An upstream that sends "100 Continue" anyway has still accepted the event."""
    async def main() -> None:
        box: list[Server] = []
        response = (b"HTTP/1.1 100 Continue\r\n\r\n"
                    b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        async with Server(keep_alive(response, box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            for _ in range(2):
                assert (await pool.post(b"{}", {})).status == 202
            assert s.connections == 1  # in sync after the 1xx heads: reused
            await pool.aclose()

        endless = b"HTTP/1.1 100 Continue\r\n\r\n" * 20
        async with Server(keep_alive(endless, box)) as s:
            box[0] = s
            pool = HTTP1Pool(s.url, timeout_s=5)
            with pytest.raises(UpstreamUnavailable, match="malformed"):
                await pool.post(b"{}", {})
            await pool.aclose()
    run(main())


@pytest.mark.parametrize("response, reused", [
    # Both framings: chunked wins, and the connection is not reused.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"4\r\nbusy\r\n0\r\n\r\n", False),
    # A repeated, identical Content-Length is one value.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", True),
    (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", True),  # no reason phrase
], ids=["both-framings", "repeated-length", "chunked-any-case", "no-reason"])
def test_response_framing(response: bytes, reused: bool) -> None:
    async def main() -> None:
        box: list[Server] = []
        async with Server(keep_alive(response, box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            for _ in range(2):
                assert (await pool.post(b"{}", {})).status == 200
            assert s.connections == (1 if reused else 2)
            await pool.aclose()
    run(main())


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    # Only "chunked" alone is a transfer coding h11 (and httpx) reads; the old pool read
    # these as close-delimited or chunked, a guess about where the body ends.
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nwhatever",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX Bad: header\r\n\r\nok",
], ids=["conflicting-lengths", "signed-length", "four-digit-status", "status-below-100",
        "unasked-switch", "chunked-not-last", "gzip-then-chunked", "bad-field-name"])
def test_malformed_responses_are_refused_not_guessed(response: bytes) -> None:
    async def main() -> None:
        box: list[Server] = []
        async with Server(keep_alive(response, box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            with pytest.raises(UpstreamUnavailable, match="malformed"):
                await pool.post(b"{}", {})
            await pool.aclose()
    run(main())


def test_a_response_body_past_the_cap_is_not_read_but_its_status_stands() -> None:
    # A 2xx is the answer, whatever its body: an upstream that echoes a large
    # acknowledgement must not get each event max_attempts times and dead-letter it.
    async def main() -> None:
        box: list[Server] = []
        big = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 2_000_000
        async with Server(keep_alive(big, box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            assert (await pool.post(b"{}", {})).status == 200
            assert (await pool.post(b"{}", {})).status == 200
            assert s.connections == 2  # the unread rest is not taken for the next answer
            await pool.aclose()
    run(main())


def test_a_body_still_arriving_at_the_timeout_leaves_the_status_standing() -> None:
    async def main() -> None:
        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        async with Server(trickle) as s:
            pool = HTTP1Pool(s.url, timeout_s=0.5)
            started = asyncio.get_running_loop().time()
            assert (await pool.post(b"{}", {})).status == 202
            assert asyncio.get_running_loop().time() - started < 2
            await pool.aclose()
    run(main())


def test_a_stray_second_answer_is_never_taken_for_the_next_requests() -> None:
    # An upstream that answers 500 and then writes a stray 200 (in one write, or a
    # moment later): each request gets its own answer, the 500, and no event is counted
    # delivered on the strength of a 200 that answered nothing.
    async def main(pause_s: float) -> None:
        async def double(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                if pause_s:
                    await writer.drain()
                    await asyncio.sleep(pause_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        async with Server(double) as s:
            pool = HTTP1Pool(s.url, timeout_s=5)
            for _ in range(3):
                assert (await pool.post(b"{}", {})).status == 500
                await asyncio.sleep(pause_s * 2)
            assert s.connections == 3
            await pool.aclose()
    run(main(0.0))
    run(main(0.1))


def test_a_content_length_shorter_than_the_body_costs_no_failed_attempt() -> None:
    # A common server bug: the length of a UTF-8 body counted in characters.
    async def main() -> None:
        box: list[Server] = []
        body = "délivré ok".encode()  # 10 characters, 12 bytes
        short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + body
        async with Server(keep_alive(short, box)) as s:
            box.append(s)
            pool = HTTP1Pool(s.url, timeout_s=5)
            for _ in range(3):
                assert (await pool.post(b"{}", {})).status == 200
            assert s.connections == 3 and len(s.requests) == 3
            await pool.aclose()
    run(main())


def test_an_unsolicited_answer_on_an_idle_connection_is_not_the_next_requests() -> None:
    # Some servers send "408 Request Timeout" on a kept-alive connection left idle.
    async def main() -> None:
        async def idle_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)  # and does not close at once
        async with Server(idle_408) as s:
            pool = HTTP1Pool(s.url, timeout_s=5)
            assert (await pool.post(b"{}", {})).status == 200
            await asyncio.sleep(0.3)
            assert (await pool.post(b"{}", {})).status == 200
            assert s.connections == 2
            await pool.aclose()
    run(main())


def test_a_refused_upstream_certificate_says_why() -> None:
    import ssl

    import trustme

    async def main() -> None:
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            # Trusting the system's roots only, not the CA that issued the upstream's cert.
            pool = HTTP1Pool(f"https://127.0.0.1:{port}/events", timeout_s=5)
            with pytest.raises(UpstreamUnavailable) as refused:
                await pool.post(b"{}", {})
            assert str(refused.value) == ("upstream unreachable: SSLCertVerificationError "
                                          "(unable to get local issuer certificate)")
        finally:
            server.close()
    run(main())
