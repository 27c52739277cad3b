"""HTTP/1.1 listeners: Hypercorn, through its public API, on a socket the sidecar owns.

``Listener.serve`` is ``hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)``
with a ``Config`` subclass whose ``create_sockets`` hands Hypercorn the socket the
sidecar bound (``SO_REUSEPORT`` for ingest processes) and whose ``create_ssl_context``
returns the TLS holder's listener context: each connection is made from the current
(reloadable) context, and the identity check and the connection cap run inside the
handshake (``sidecar.tls.holder``).

Each limit of docs/http.md, and what enforces it:

==========================  =================================================================
handshake timeout           Hypercorn's ``ssl_handshake_timeout`` (``asyncio.start_server``)
header deadline             ``sidecar.server.http11``: the head within ``header_timeout_s`` of
                            its first byte; Hypercorn has only per-read and idle timeouts
header size                 h11's ``h11_max_incomplete_size`` (431 while incomplete, bounded
                            buffer), and ``sidecar.server.guard`` for a head read at once
idle keep-alive             Hypercorn's ``keep_alive_timeout`` (from the end of a response;
                            timed by ``http11`` after a connection's first request)
pipelining, trailers        h11 and Hypercorn: h11 buffers at most one read plus
                            ``h11_max_incomplete_size`` (trailers included, and it never
                            merges trailer fields into the headers), and Hypercorn reads no
                            more while a request is being answered
body size and deadline      the app (``sidecar.app.public``): 413 / 408 with
                            ``connection: close``; Hypercorn reads at most
                            ``max_app_queue_size`` messages ahead of the app
unread bodies, slow readers ``sidecar.server.guard``: ``connection: close``, a drained queue,
                            a send deadline
HTTP/1.1 only               ALPN ``http/1.1`` (holder), ``http11`` (no h2c, no preface),
                            ``guard`` (505 for any other version)
graceful drain              Hypercorn's ``graceful_timeout``: stop accepting, close idle
                            connections, let requests finish, then cancel
connection cap              the TLS holder, counted from accept (``limits.max_connections``)
==========================  =================================================================
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets

from sidecar.server import http11
from sidecar.server.guard import RequestGuard

__all__ = ["ListenerLimits", "Listener", "bind_socket"]

# Hypercorn's own log lines ("Running on ...", "Error in ASGI Framework") go through the
# sidecar's logging; the start-up lines repeat ``server.starting``, so warnings and up only.
_HYPERCORN_LOG = logging.getLogger("sidecar.server.hypercorn")
if _HYPERCORN_LOG.level == logging.NOTSET:
    _HYPERCORN_LOG.setLevel(logging.WARNING)

# Body messages Hypercorn may read ahead of the app (each at most one 64 KiB read): the
# most one request's body can hold in memory before the app has read it.
_APP_QUEUE_MESSAGES = 2
# Requests on one kept-alive connection before it is closed (a backstop: every request is
# judged again by the TLS policy in force, ``sidecar.server.http11``).
_KEEP_ALIVE_MAX_REQUESTS = 10_000


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    max_header_bytes: int = 16 * 1024  # request line + headers
    handshake_timeout_s: float = 10.0
    graceful_timeout_s: float = 10.0
    send_timeout_s: float | None = None  # default: header_timeout_s

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "keepalive_timeout_s", "handshake_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0.")
        if self.send_timeout_s is not None and not self.send_timeout_s > 0:
            raise ValueError("send_timeout_s must be greater than 0.")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be at least 1024.")

    @property
    def effective_send_timeout_s(self) -> float:
        return self.send_timeout_s if self.send_timeout_s is not None else self.header_timeout_s


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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Hypercorn's own
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _ListenerConfig(Config):
    """Hypercorn's settings for one listener; its sockets and TLS context are ours."""

    on_refused: http11.Refused  # read by sidecar.server.http11
    idle_connections: http11.IdleConnections | None = None  # likewise, set while serving

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext | None,
                 limits: ListenerLimits, backlog: int) -> None:
        self._sock = sock
        self._ssl_context = ssl_context
        self.header_timeout_s = limits.header_timeout_s  # read by sidecar.server.http11
        self.backlog = backlog
        self.ssl_handshake_timeout = limits.handshake_timeout_s
        self.h11_max_incomplete_size = limits.max_header_bytes
        self.keep_alive_timeout = limits.keepalive_timeout_s
        self.keep_alive_max_requests = _KEEP_ALIVE_MAX_REQUESTS
        self.max_requests = None  # a listener stops only through its stop (http11's idle timer)
        # No per-read timeout: every phase has its own deadline (keep-alive, header
        # deadline, the app's body deadline, the guard's send deadline), and Hypercorn's
        # read_timeout wraps every read in asyncio.wait_for (a task and a timer each).
        self.read_timeout = None
        self.graceful_timeout = limits.graceful_timeout_s
        self.max_app_queue_size = _APP_QUEUE_MESSAGES
        self.include_server_header = False
        self.accesslog = None  # requests are logged by the app, hub.verify_token redacted
        self.errorlog = _HYPERCORN_LOG

    def listening_socket(self) -> socket.socket:
        return self._sock

    @property
    def ssl_enabled(self) -> bool:
        return self._ssl_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    def create_sockets(self) -> Sockets:
        if self._ssl_context is not None:
            return Sockets(secure_sockets=[self._sock], insecure_sockets=[], quic_sockets=[])
        return Sockets(secure_sockets=[], insecure_sockets=[self._sock], quic_sockets=[])


class Listener:
    """Serves one ASGI app on one bound socket until ``stop`` is set, then drains."""

    def __init__(self, app: Any, sock: socket.socket, *, limits: ListenerLimits,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 1024,
                 count_refused: Callable[[str], None] | None = None) -> None:
        """``count_refused(outcome)`` counts each request this listener refuses before
        the app sees it (the guard's and ``http11``'s refusals), beside its log line."""
        self._app = app
        self._limits = limits

        def refused(outcome: str, **facts: object) -> None:
            http11.log_refusal(outcome, **facts)
            if count_refused is not None:
                count_refused(outcome)

        self._on_refused = refused
        self._config = _ListenerConfig(sock, ssl_context, limits, backlog)
        self._config.on_refused = refused

    async def serve(self, stop: asyncio.Event) -> None:
        http11.install()
        # Listening now, not once Hypercorn has started: connections made from here on
        # wait in the backlog, so the process is reachable once it says it is ready.
        self._config.listening_socket().listen(self._config.backlog)
        app = RequestGuard(self._app, stopping=stop,
                           max_header_bytes=self._limits.max_header_bytes,
                           send_timeout_s=self._limits.effective_send_timeout_s,
                           on_refused=self._on_refused)
        idle = self._config.idle_connections = http11.IdleConnections(stop)
        closer = asyncio.create_task(_close_idle_at(stop, idle))
        try:
            await serve(app, self._config, shutdown_trigger=stop.wait,  # type: ignore[arg-type]
                        mode="asgi")
        finally:
            closer.cancel()


async def _close_idle_at(stop: asyncio.Event, idle: http11.IdleConnections) -> None:
    """A stop closes the kept-alive connections that wait for a request at once (as
    Hypercorn's own idle task does, ``sidecar.server.http11``); the others finish their
    request first (Hypercorn's graceful drain)."""
    await stop.wait()
    idle.close_all()
