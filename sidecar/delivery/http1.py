"""A small HTTP/1.1 keep-alive pool for the one thing the delivery worker does: POST a
JSON body to one upstream URL and read the status.  The framing is h11's (the codec of
Hypercorn and of httpcore, under httpx); this module only pools connections.

Why not httpx here: a POST through ``httpx.AsyncClient`` costs several times the CPU of
this pool (httpcore's per-request pool scan and anyio plumbing; bench/RESULTS.md), more
than everything else on the ingest path together.  The worker needs none of httpx's generality (one origin, no
redirects, no cookies, no proxies, no HTTP/2), so this pool keeps up to
``max_connections`` persistent connections, each an ``h11.Connection`` over an asyncio
stream.  httpx stays the client for everything else (Graph API, send-test).

Behaviour:

* One request at a time per connection; at most ``max_connections`` connections.
* The whole exchange is bounded by ``timeout_s``; a connection that timed out or
  misbehaved is closed, never reused.
* A kept-alive connection the server closed while idle shows up as EOF (or a reset)
  before any response byte; that request is retried once on a fresh connection
  (delivery is at-least-once and the upstream deduplicates by event id).
* The answer is the final response's status.  Its body is read only so that the
  connection can carry the next request, up to 1 MiB and within ``timeout_s``, and
  dropped (never logged); past either, the connection is closed and the status stands.
  A body the upstream cuts short is no full answer.
* A connection is pooled only when the server sent nothing past its answer, and taken
  from the pool only when it has sent nothing since (an unsolicited ``408``, a stray
  second answer): otherwise those bytes would be read as the next request's answer.
* h11 judges the framing (RFC 9112): 1xx responses before the final one are skipped (up
  to 8), an unasked ``101``, conflicting ``Content-Length`` values or a transfer coding
  other than ``chunked`` are malformed; a response with both ``Transfer-Encoding`` and
  ``Content-Length`` is read as chunked and its connection is not trusted with another
  request (closed after it).
* Every failure is ``UpstreamUnavailable``, with a message that names no body.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

import h11

from sidecar.delivery.transport import UpstreamResponse
from sidecar.errors import UpstreamUnavailable
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["HTTP1Pool"]

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_INFORMATIONAL = 8  # 1xx responses skipped before the final one
_READ_BYTES = 64 * 1024


class _StaleConnection(Exception):
    """EOF or a reset before any response byte on a reused connection."""


class _Connection:
    __slots__ = ("reader", "writer", "http", "reused", "received_any", "ended")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.reused = False
        self.received_any = False  # of the current response
        self.ended = False  # the server closed its side

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
        self._target = target.encode("ascii")
        self._fixed_headers = [(b"host", parts.netloc.rpartition("@")[2].encode("ascii")),
                               (b"user-agent", b"whatsapp-webhook-sidecar")]
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    async def post(self, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        async with self._slots:
            deadline = asyncio.get_running_loop().time() + self._timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    try:
                        conn, response = await self._exchange(self._take_idle(), body, headers)
                    except _StaleConnection:
                        conn, response = await self._exchange(None, body, headers)
            except TimeoutError:
                raise UpstreamUnavailable("upstream timed out") from None
            await self._finish(conn, response, deadline)
            return response

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ internals

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not (conn.reader.at_eof() or conn.writer.is_closing() or _unread(conn.reader)):
                return conn
            # Closed by the server, or it sent something while idle (an unsolicited
            # ``408``, a stray second answer): that connection can no longer be trusted
            # to pair its next answer with the next request.
            conn.close()
        return None

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls() if self._tls else None,
                limit=MAX_HEAD_BYTES)
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {_error_name(exc)}") from None
        return _Connection(reader, writer)

    def _request_bytes(self, http: h11.Connection, body: bytes,
                       headers: Mapping[str, str]) -> bytes:
        fields = [*self._fixed_headers, *((n.encode("latin-1"), v.encode("latin-1"))
                                          for n, v in headers.items()),
                  (b"content-length", b"%d" % len(body))]
        return (http.send(h11.Request(method=b"POST", target=self._target, headers=fields))
                + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))

    async def _exchange(self, conn: _Connection | None, body: bytes,
                        headers: Mapping[str, str]) -> tuple[_Connection, UpstreamResponse]:
        """The request sent and the final response's head read; the connection is closed
        unless this returns."""
        if conn is None:
            conn = await self._open()
        try:
            conn.received_any = conn.ended = False
            try:
                conn.writer.write(self._request_bytes(conn.http, body, headers))
                await conn.writer.drain()
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise _connection_failed(conn, exc, head=True) from None
            informational = 0
            while True:
                event = await self._next_event(conn, head=True)
                if isinstance(event, h11.Response):
                    return conn, UpstreamResponse(event.status_code,
                                                  _header_dict(event.headers))
                if isinstance(event, h11.InformationalResponse):
                    informational += 1  # "100 Continue", "103 Early Hints", sent unasked
                    if informational > MAX_INFORMATIONAL:
                        raise UpstreamUnavailable("upstream sent a malformed HTTP response")
                else:  # ConnectionClosed before the response
                    raise UpstreamUnavailable("upstream closed the connection mid-response")
        except BaseException:
            conn.close()
            raise

    async def _finish(self, conn: _Connection, response: UpstreamResponse,
                      deadline: float) -> None:
        """Read the response's body to its end, so that the connection can carry the next
        request, and pool it.  The status is the answer: a body past ``MAX_BODY_BYTES``,
        or still arriving at the deadline, is not read further and its connection is
        closed, but the answer stands.  A body the upstream cuts short, or frames wrongly,
        is no full answer (``UpstreamUnavailable``)."""
        reusable = False
        try:
            body = _Body(conn, response)
            # The usual answer is in the buffer already, head and body: read without a
            # timer, which only the rest of a larger or slower body needs.
            event = _buffered_event(conn)
            while event is not h11.NEED_DATA and body.take(event):
                event = _buffered_event(conn)
            if body.reusable is None:
                async with asyncio.timeout_at(deadline):
                    while body.take(await self._next_event(conn, head=False)):
                        pass
            reusable = bool(body.reusable)
        except TimeoutError:
            pass  # the body is still arriving: the connection goes, the answer stands
        finally:
            if reusable and not self._closed:
                conn.http.start_next_cycle()
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()

    async def _next_event(self, conn: _Connection, *, head: bool) -> object:
        """h11's next event, reading as needed; every failure is ``UpstreamUnavailable``
        (``_StaleConnection`` for a reused connection the server had closed, before any
        byte of the response)."""
        while True:
            event = _buffered_event(conn)
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await conn.reader.read(_READ_BYTES)
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise _connection_failed(conn, exc, head=head) from None
            if not data:
                if head and not conn.received_any and conn.reused:
                    raise _StaleConnection()
                conn.ended = True
            conn.received_any = True
            try:
                conn.http.receive_data(data)  # b"" is the end of the stream
            except h11.ProtocolError:
                raise UpstreamUnavailable("upstream sent a malformed HTTP response") from None


class _Body:
    """A response's body, event by event: ``take`` says whether to go on; ``reusable``
    is None until the body ends (True: the connection can carry another request) or is
    given up (past ``MAX_BODY_BYTES``: False)."""

    __slots__ = ("conn", "response", "size", "reusable")

    def __init__(self, conn: _Connection, response: UpstreamResponse) -> None:
        self.conn = conn
        self.response = response
        self.size = 0
        self.reusable: bool | None = None

    def take(self, event: object) -> bool:
        if isinstance(event, h11.Data):
            self.size += len(event.data)
            if self.size > MAX_BODY_BYTES:
                self.reusable = False
                return False
            return True
        if isinstance(event, h11.EndOfMessage):
            http = self.conn.http
            # Both framings at once is how responses are split (RFC 9112 §6.3): read as
            # chunked, and the connection is not trusted with another request; nor is one
            # that sent more than its answer.
            split = ("transfer-encoding" in self.response.headers
                     and "content-length" in self.response.headers)
            self.reusable = (http.our_state is h11.DONE and http.their_state is h11.DONE
                             and not split and not http.trailing_data[0])
            return False
        raise UpstreamUnavailable("upstream closed the connection mid-response")


def _buffered_event(conn: _Connection) -> object:
    """h11's next event from what has been read (``h11.NEED_DATA`` when it needs more)."""
    try:
        return conn.http.next_event()
    except h11.RemoteProtocolError:
        if conn.ended:  # h11 saw the stream end inside the response
            raise UpstreamUnavailable("upstream closed the connection mid-response") from None
        raise UpstreamUnavailable("upstream sent a malformed HTTP response") from None


def _connection_failed(conn: _Connection, exc: BaseException, *, head: bool) -> Exception:
    """A reset on a reused connection before any byte of the answer is a connection the
    server had closed while idle (retried once on a fresh one); anything else fails."""
    if head and conn.reused and not conn.received_any and isinstance(exc, ConnectionResetError):
        return _StaleConnection()
    return UpstreamUnavailable(f"upstream connection failed: {type(exc).__name__}")


def _unread(reader: asyncio.StreamReader) -> bool:
    """Whether the server sent bytes that no request asked for yet.  The stream's
    transport reads as data arrives, so they wait in its buffer, which StreamReader
    does not expose (``_buffer``, the same in every CPython 3.x and under uvloop)."""
    return bool(getattr(reader, "_buffer", b""))


def _error_name(exc: BaseException) -> str:
    """The exception's class, with OpenSSL's reason for a certificate it refused."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{type(exc).__name__} ({exc.verify_message})"
    return type(exc).__name__


def _header_dict(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
