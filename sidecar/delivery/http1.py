"""A small HTTP/1.1 keep-alive client for the one thing the delivery worker does:
POST a JSON body to one upstream URL and read the status.

Why not httpx here: measured on the 2-core box (reference/performance-baseline.md and
bench/RESULTS.md), a POST through ``httpx.AsyncClient`` costs ~1.5 ms of CPU, mostly
httpcore's per-request pool scan and anyio plumbing — more than everything else on the
ingest path together.  The worker needs none of httpx's generality (one origin, no
redirects, no cookies, no proxies, no HTTP/2), so this pool keeps up to
``max_connections`` persistent connections and speaks just enough HTTP/1.1.  httpx
stays the client for everything else (Graph API, send-test, probes).

Behaviour:

* One request at a time per connection; at most ``max_connections`` connections.
* The whole exchange is bounded by ``timeout_s``; a connection that timed out or
  misbehaved is closed, never reused.
* A kept-alive connection the server closed while idle shows up as EOF before any
  response byte; that request is retried once on a fresh connection (delivery is
  at-least-once and the upstream deduplicates by event id).
* Response bodies are read (so the connection can be reused) up to 1 MiB and dropped:
  the worker never needs them, and they are never logged.
* Framing is read as RFC 9112 says: 1xx responses before the final one are skipped;
  chunked wins over Content-Length, and a response carrying both is not trusted to
  leave the connection in sync (closed after it); conflicting Content-Length values are
  malformed.
* Every failure is ``UpstreamUnavailable``, with a message that names no body.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from sidecar.delivery.transport import UpstreamResponse
from sidecar.errors import UpstreamUnavailable
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["HTTP1Pool"]

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_INFORMATIONAL = 8  # 1xx responses skipped before the final one


class _StaleConnection(Exception):
    """EOF before any response byte on a reused connection."""


class _Connection:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


class HTTP1Pool:
    def __init__(self, url: str, *, timeout_s: float, max_connections: int = 8,
                 tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        """``tls`` gives the context for each new connection to an https URL (default:
        the system's roots); it is asked again each time, so it may change."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = (tls or UpstreamTrust(None).context) if parts.scheme == "https" else None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host_header = parts.netloc.rpartition("@")[2]
        self._request_head = (f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\n"
                              "User-Agent: whatsapp-webhook-sidecar\r\n").encode("latin-1")
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    async def post(self, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout_s):
                    try:
                        return await self._exchange(self._take_idle(), body, headers)
                    except _StaleConnection:
                        return await self._exchange(None, body, headers)
            except TimeoutError:
                raise UpstreamUnavailable("upstream timed out") from None

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ internals

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls() if self._tls else None,
                limit=MAX_HEAD_BYTES)
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from None
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection | None, body: bytes,
                        headers: Mapping[str, str]) -> UpstreamResponse:
        if conn is None:
            conn = await self._open()
        reusable = False
        try:
            head = bytearray(self._request_head)
            for name, value in headers.items():
                head += f"{name}: {value}\r\n".encode("latin-1")
            head += b"Content-Length: %d\r\n\r\n" % len(body)
            conn.writer.write(bytes(head) + body)
            response, reusable = await self._read_response(conn)
            return response
        except asyncio.IncompleteReadError as exc:
            if conn.reused and not exc.partial:
                raise _StaleConnection() from None
            raise UpstreamUnavailable("upstream closed the connection mid-response") from None
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            if conn.reused and isinstance(exc, ConnectionResetError):
                raise _StaleConnection() from None
            raise UpstreamUnavailable(f"upstream connection failed: {type(exc).__name__}"
                                      ) from None
        except (asyncio.LimitOverrunError, ValueError):
            raise UpstreamUnavailable("upstream sent a malformed HTTP response") from None
        finally:
            if reusable and not self._closed:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()

    async def _read_response(self, conn: _Connection) -> tuple[UpstreamResponse, bool]:
        await conn.writer.drain()
        # A client must accept 1xx responses before the final one even unasked (RFC 9110
        # §15.2): some servers send "100 Continue" or "103 Early Hints" anyway.
        for _ in range(MAX_INFORMATIONAL + 1):
            version, status, headers = await self._read_head(conn.reader)
            if status >= 200:
                break
            if status == 101:
                raise ValueError("protocol switch not asked for")
        else:
            raise ValueError("too many informational responses")
        keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            if transfer_encoding.rpartition(",")[2].strip().lower() == "chunked":
                await self._skip_chunked(conn.reader)
                if "content-length" in headers:
                    # Both framings at once is how responses are split (RFC 9112 §6.3):
                    # chunked wins, and the connection is not trusted with another request.
                    keep_alive = False
            else:
                keep_alive = False  # delimited by close: we stop reading and drop it
        elif "content-length" in headers:
            length = _content_length(headers["content-length"])
            if length > MAX_BODY_BYTES:
                raise ValueError("response body too large")
            await conn.reader.readexactly(length)
        elif status not in (204, 304):
            keep_alive = False  # body delimited by close: we stop reading and drop it
        return UpstreamResponse(status, headers), keep_alive

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[str, int, dict[str, str]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if (not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit())
                or rest[3:4] not in ("", " ") or not 100 <= int(code) <= 599):
            raise ValueError("bad status line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("bad header line")
            name, value = name.strip().lower(), value.strip()
            # A repeated field is one list (RFC 9110 §5.3); Content-Length checks its own.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return version, int(code), headers

    @staticmethod
    async def _skip_chunked(reader: asyncio.StreamReader) -> None:
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("response body too large")
            if size == 0:
                # trailers, if any, end with an empty line
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)


def _content_length(value: str) -> int:
    """The length, from one value or a list of identical ones (RFC 9112 §6.3); any other
    value is malformed, never guessed at."""
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ValueError("conflicting content-length")
    (only,) = values
    if not (only.isascii() and only.isdigit()):
        raise ValueError("bad content-length")
    return int(only)
