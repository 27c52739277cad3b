"""What every listener's app runs inside: the limits that are plain ASGI.

Hypercorn serves the request; this wrapper, outside Hypercorn's internals, adds:

* **HTTP/1.x only**: h11 parses any ``HTTP/d.d`` request line, so ``HTTP/2.0`` (and the
  HTTP/2 preface, which ``sidecar.server.http11`` keeps as an HTTP/1.1 request) is
  answered ``505`` here, before the app.
* **no ambiguous heads**: a request with both ``Content-Length`` and
  ``Transfer-Encoding``, or with a control byte in a header value, is answered ``400``
  (h11 would frame the first by its chunked coding and pass the second on).
* **a header size cap**: h11's ``max_incomplete_event_size`` bounds what it buffers
  while a head is incomplete, but a complete head that arrived in one read is parsed
  whatever its size; one larger than ``max_header_bytes`` is answered ``431`` here.
* **no unread bodies**: an answer that starts before the app has read the whole body
  (404, 405, 413, 408) says ``connection: close``, and Hypercorn closes the connection
  after it instead of reading the rest.  What Hypercorn already queued for the app is
  drained in the background until the request ends: Hypercorn's queue of body messages
  is bounded, and with nobody reading it the request could never end (measured on plain
  Hypercorn 0.18: the connection stayed open with 2.5 MB unread, for good).
* **a send deadline**: an answer the client does not take within ``send_timeout_s``
  (it stopped reading: a pipelining flood, a stalled reader) ends the request, and the
  connection with it; Hypercorn's writes otherwise wait for the client for ever.
* **a graceful stop that says so**: while the listener drains, every answer says
  ``connection: close``, so no client sends another request on a closing connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from sidecar.server.http11 import CONTINUE, Refused, log_refusal

__all__ = ["RequestGuard"]

log = logging.getLogger("sidecar.server.listen")

_CLOSE = (b"connection", b"close")
_FRAMING = {b"content-length": 1, b"transfer-encoding": 2}
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # a field value may hold HTAB, not these
_DRAIN_LIMIT_S = 60.0  # a backstop: the request always ends well before (send deadline)

ASGIApp = Any  # (scope, receive, send) -> Awaitable[None]; Hypercorn's types are its own
Message = dict[str, Any]


class _SendFailed(Exception):
    """The answer could not be sent: the request ends here."""


class RequestGuard:
    def __init__(self, app: ASGIApp, *, stopping: asyncio.Event, max_header_bytes: int,
                 send_timeout_s: float, on_refused: Refused = log_refusal) -> None:
        self._app = app
        self._on_refused = on_refused
        self._stopping = stopping
        self._max_header_bytes = max_header_bytes
        self._send_timeout_s = send_timeout_s
        self._drains: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            # No WebSocket here: refused before the handshake (Hypercorn answers 403;
            # an app that just returned would make it a 500).
            await receive()
            await send({"type": "websocket.close"})
            return
        app = self._app
        head = _Head(scope)
        if not scope["http_version"].startswith("1."):
            # (HTTP/1.2 and up are served as HTTP/1.1, RFC 9110 §2.5: same major version.)
            app = _Refusal(505, "http_version", self._on_refused)
        elif head.size > self._max_header_bytes:
            app = _Refusal(431, "header_limit", self._on_refused)
        elif head.ambiguous:
            app = _Refusal(400, "malformed_request", self._on_refused)
        body_unread = head.declares_body

        send_continue = CONTINUE.get()

        async def guarded_receive() -> Message:
            nonlocal body_unread, send_continue
            if send_continue is not None:
                # The app wants the body: a client waiting for ``100 Continue`` gets it now
                # (``sidecar.server.http11``), not before an answer decided by the head.
                continue_now, send_continue = send_continue, None
                await continue_now()
            message: Message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_unread = False
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if body_unread or self._stopping.is_set():
                    message = _closing(message)
                if body_unread:
                    self._drain(receive)
                # The head is held until the body follows (``sidecar.server.http11``): it
                # writes nothing, so it needs no deadline of its own.
                await send(message)
                return
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    await send(message)
            except TimeoutError:
                raise _SendFailed("send_timeout") from None
            except OSError as exc:
                # The connection failed under the answer (reset, or the TLS close met
                # data the client sent after it): the client's doing, not an app error.
                raise _SendFailed(type(exc).__name__) from None

        try:
            await app(scope, guarded_receive, guarded_send)
        except _SendFailed as failed:
            # Ending the app ends the request: Hypercorn closes the connection.
            log.info("request.send_failed", extra={"outcome": str(failed)})

    def _drain(self, receive: Any) -> None:
        task = asyncio.create_task(_drain(receive))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)


async def _lifespan(receive: Any, send: Any) -> None:
    """The apps have no start-up or shutdown work of their own: ``compose`` built their
    parts before serving, and the roles close them after."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _drain(receive: Any) -> None:
    try:
        async with asyncio.timeout(_DRAIN_LIMIT_S):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


class _Refusal:
    """An answer given instead of the app's, closing the connection."""

    def __init__(self, status: int, outcome: str, refused: Refused) -> None:
        self._status = status
        self._outcome = outcome
        self._refused = refused

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self._refused(self._outcome, status=self._status)
        await send({"type": "http.response.start", "status": self._status,
                    "headers": [(b"content-length", b"0"), _CLOSE]})
        await send({"type": "http.response.body", "body": b""})


def _closing(start: Message) -> Message:
    headers = list(start.get("headers", ()))
    if _CLOSE not in headers:
        headers.append(_CLOSE)
    return {**start, "headers": headers}


class _Head:
    """What the guard needs of a request head, in one pass over its fields.

    ``size``: the head as sent, near enough (the request line, and each field line:
    name, ": ", value, CRLF).  ``ambiguous``: what h11 lets through that a request must
    not carry (RFC 9112 §6.3, RFC 9110 §5.5): both framings at once, where h11 silently
    frames by the chunked coding (the classic request-smuggling ambiguity, which RFC 9112
    lets a server refuse), or a control byte in a field value.  ``declares_body``: a
    ``Transfer-Encoding``, or a ``Content-Length`` other than 0."""

    __slots__ = ("size", "ambiguous", "declares_body")

    def __init__(self, scope: dict[str, Any]) -> None:
        size = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 12
        framings = 0
        control = declares_body = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name in _FRAMING:
                framings |= _FRAMING[name]
                declares_body = declares_body or name == b"transfer-encoding" or value != b"0"
            if not control and _CONTROL.search(value):
                control = True
        self.size = size
        self.ambiguous = control or framings == 3
        self.declares_body = declares_body
