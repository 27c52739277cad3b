"""HTTP/1.1 listeners: uvicorn's httptools protocol on a socket the sidecar owns.

Why uvicorn's protocol (llhttp, the C parser behind Node.js, through ``httptools``)
rather than Hypercorn + h11: the same Starlette app with the same HMAC and JSON work,
over the same mTLS, answered 2.6-4x the requests per second on keep-alive connections
and 1.2-1.5x the new handshakes per second on the project's 2-core machine
(``bench/RESULTS.md``: the ``ref-hypercorn`` and ``ref-uvicorn`` peers).
h11 is pure Python and Hypercorn adds a task group, an idle task and three writes per
request; at a few thousand deliveries a second that was most of the sidecar's CPU.

Only the per-connection protocol is uvicorn's.  The listening socket, the TLS context
(reloadable, identity-checking: ``sidecar.tls.holder``) and the lifecycle are ours, and
this module adds what uvicorn does not do but the SPEC's slow-client limits need:

* a **handshake timeout** (``ssl_handshake_timeout``): a client that stalls the TLS
  handshake is dropped;
* a **header deadline**: the request line and headers must be complete within
  ``header_timeout_s`` of the connection's first byte (or of its handshake, for a
  client that sends nothing); bytes trickling in do not extend it (slowloris).  A client
  that sent part of a request gets 408, one that sent nothing is just closed;
* a **header size cap**: more than ``max_header_bytes`` before the end of the headers
  gets 431 and the connection is closed; nothing past the cap is handed to the parser,
  so a huge header costs no memory;
* **no unread bodies**: a request answered before its body was all read (404, 405, a
  GET with a body) is answered with ``Connection: close`` and the connection is closed
  after the answer, instead of reading the rest with no deadline (saying so in the
  answer keeps a client from sending its next request on a connection about to close);
* an **idle keep-alive timeout** of its own (``keepalive_timeout_s``), separate from the
  header deadline;
* **one write per response**: uvicorn writes a response's head and body separately,
  which over TLS is two records and two ``send`` calls; the head is held until the body
  follows (or the loop turns), so a small response is one of each;
* a **graceful stop**: stop accepting, close idle connections, let requests in progress
  finish (their connections close after the response), cancel what is left after
  ``graceful_timeout_s``.

The body deadline and size limit are the app's (``sidecar.app.public``): it reads the
stream itself and answers 408/413 with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import weakref
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

__all__ = ["ListenerLimits", "Listener", "bind_socket"]

log = logging.getLogger("sidecar.server.listen")

_DRAIN_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    max_header_bytes: int = 16 * 1024  # request line + headers
    handshake_timeout_s: float = 10.0
    graceful_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "keepalive_timeout_s", "handshake_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0.")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be at least 1024.")


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket, not yet listening (``Listener.serve`` listens on it with its
    backlog); ``OSError`` when the port is taken.  ``reuse_port`` lets several ingest
    processes each listen on the same port (``SO_REUSEPORT``: the kernel spreads new
    connections across them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """Serves one ASGI app on one bound socket until ``stop`` is set, then drains."""

    def __init__(self, app: Any, sock: socket.socket, *, limits: ListenerLimits,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 1024) -> None:
        self._sock = sock
        self._ssl = ssl_context
        self._limits = limits
        self._backlog = backlog
        self._config = UvicornConfig(
            app, http=_Protocol, ws="none", lifespan="off", interface="asgi3",
            proxy_headers=False,  # nothing in front of us: never trust X-Forwarded-*
            server_header=False, date_header=True, access_log=False, log_config=None,
            timeout_keep_alive=limits.keepalive_timeout_s)  # type: ignore[arg-type]
        self._config.load()
        self._state = ServerState()

    async def serve(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        config, state, limits = self._config, self._state, self._limits

        def protocol() -> _Protocol:
            return _Protocol(config=config, server_state=state, app_state={}, _loop=loop,
                             limits=limits)

        server = await loop.create_server(
            protocol, sock=self._sock, ssl=self._ssl, backlog=self._backlog,
            ssl_handshake_timeout=limits.handshake_timeout_s if self._ssl else None)
        try:
            while not stop.is_set():
                state.default_headers = [(b"date", formatdate(usegmt=True).encode())]
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        finally:
            server.close()
            await self._drain()

    async def _drain(self) -> None:
        state = self._state
        for connection in list(state.connections):
            connection.shutdown()  # idle: closed now; busy: closed after its response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limits.graceful_timeout_s
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            connection.transport.close()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol plus the header deadline and size cap (see above)."""

    def __init__(self, *args: Any, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False  # we log requests ourselves, with hub.verify_token redacted
        self._limits = limits
        self._awaiting_headers = True
        self._header_bytes = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        self._writer: _ResponseWriter | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = _ResponseWriter(transport, self.loop)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        # uvicorn cancels its keep-alive timer only on a clean close; a timer left behind
        # would keep this connection's objects (and its ``max_connections`` slot, which
        # is released when its SSLObject is freed) alive until it fires.
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._writer is not None:
            self._writer.flush()  # anything the parser answers itself (400) goes after it
        while data and self._awaiting_headers:
            if self._header_deadline is None:
                self._arm_header_deadline()
            # Feed the parser no more than the cap allows; past it, refuse.
            room = self._limits.max_header_bytes - self._header_bytes
            if room <= 0:
                self._refuse(431, b"Request Header Fields Too Large")
                return
            chunk, data = data[:room], data[room:]
            self._header_bytes += len(chunk)
            super().data_received(chunk)
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    # Parser callbacks (httptools calls them from inside data_received).

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_deadline()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and self._writer is not None:
            cycle.transport = self._writer  # type: ignore[assignment]
            # A weak reference: a closure holding the cycle (or its bound send) would make
            # a reference cycle, keeping every finished request's objects, and through
            # them its connection, alive until a full garbage collection (measured: +16 MB
            # after 5,000 new connections).
            cycle_ref = weakref.ref(cycle)

            async def send_closing_if_body_unread(message: Any) -> None:
                current = cycle_ref()
                if current is None:
                    return  # the request is over (a send after the app returned)
                if message["type"] == "http.response.start" and current.more_body:
                    # Answered before the body was all read: the rest is not waited for
                    # (uvicorn would go on reading and discarding it with no deadline, so
                    # a client could trickle it forever).  uvicorn then says
                    # "connection: close" and closes after the answer.
                    current.keep_alive = False
                await RequestResponseCycle.send(current, message)

            cycle.send = send_closing_if_body_unread  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever comes next belongs to the next request's header phase.
        self._awaiting_headers = True
        self._header_bytes = 0

    # Header deadline.

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self._limits.header_timeout_s,
                                                     self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request waits behind one in progress: its clock restarts.
            self._arm_header_deadline()
            return
        if self._header_bytes:
            self._refuse(408, b"Request Timeout")
        else:
            self.transport.close()

    def _refuse(self, status: int, reason: bytes) -> None:
        log.info("request.refused", extra={"status": status, "outcome": "header_limit"})
        self._cancel_header_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no second one on the wire
            return
        if self._writer is not None:
            self._writer.flush()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                             % (status, reason))
        self.transport.close()


class _ResponseWriter:
    """What a request cycle writes through: holds a response's head until its body
    follows, then writes both at once (one TLS record, one ``send``).  Anything held is
    written at the end of the loop turn at the latest, and before a close."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            held, self._held = self._held, None
            self._transport.write(held + data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()
