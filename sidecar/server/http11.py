"""The one place that relies on Hypercorn's internals: its HTTP/1.1 protocol class.

Hypercorn (0.18) has a setting for most of the listener's limits, but not for these,
and none can be had from outside the protocol (the ASGI app sees a request only once
its head is complete, and the TLS object sees no HTTP):

* **a header deadline** (slowloris): Hypercorn's ``read_timeout`` is per read and its
  ``keep_alive_timeout`` runs from the end of the previous response, so a client that
  trickles a header byte now and then holds its connection for the whole keep-alive
  time.  Here a request's head must be complete within ``header_timeout_s`` of its first
  byte (of the connection's start, for the first request); past that the connection is
  closed (h11 cannot answer a request it has not parsed).
* **HTTP/1.1 only**: Hypercorn switches a connection to HTTP/2 on an ``Upgrade: h2c``
  request (answering ``101`` before the app sees anything) and on the HTTP/2 preface
  (``PRI * HTTP/2.0``), whatever ALPN said.  HTTP/2 has other limits than the ones this
  listener enforces and tests, so here those requests stay HTTP/1.1 requests (the
  ``Upgrade`` header is ignored, as RFC 9110 §7.8 allows, and ``HTTP/2.0`` in a request
  line is answered ``505`` by ``sidecar.server.guard``).
* **one write per response** (not a limit, the one cost this module removes): Hypercorn
  writes a response's head, body and (empty) end separately; here the head waits for
  the body, so a response is one TLS record and one ``send``.
* **admission judged again per request**: a TLS reload may withdraw what admitted an
  open connection (``client_auth`` now ``required``, a name or CA removed); before each
  request the connection's TLS object (``tls.holder``'s ``readmit``) says whether the
  policy in force still admits it, and if not the request is refused here and the
  connection closed.  Reached through Hypercorn's ``TCPServer`` (the ``writer`` behind
  the bound ``send``), pinned like the methods below.
* **100 Continue when the body is wanted**: Hypercorn answers ``Expect: 100-continue``
  as soon as the head is parsed, inviting the upload of a body the app is about to
  refuse from the head alone (413 for its declared length, 404, 405); here the 100 is
  sent when the app first asks for the body (``CONTINUE``, which ``sidecar.server.guard``
  calls), as uvicorn does, and never when the answer comes first (RFC 9110 §10.1.1).
* **one timer for the idle keep-alive** (not a limit, a cost removed): Hypercorn restarts a
  task per request to time a kept-alive connection's idle wait (``keep_alive_timeout``;
  ``TCPServer.idle_task``: a lock, a task and its ``wait_for`` started and cancelled per
  request); here, after the connection's first request, a timer does it (the
  ``Updated`` events that drive Hypercorn's task are taken here instead), and a stop
  closes the idle connections at once, as Hypercorn's task does (``IdleConnections``,
  which ``sidecar.server.listen`` gives each listener's config).
* **a client's close, seen at once**: when the client closes an idle kept-alive
  connection, Hypercorn's read loop ends but its keep-alive timer runs on, and the
  connection (its memory, and its ``limits.max_connections`` slot) lingers until the
  timer fires; here the end of the read side closes it, and the end of the connection's
  task (its socket closed) releases its slot (``tls.holder``).

``install()`` swaps the class Hypercorn's ``ProtocolWrapper`` instantiates for every
non-h2 connection (``hypercorn.protocol.H11Protocol``) for the subclass below, once per
process.  Only ``sidecar.server`` serves HTTP in the runtime, and every listener of the
sidecar wants these limits; the deadline is read from the listener's own config
(``header_timeout_s``), so a config without it gets plain Hypercorn behaviour.
The pin is ``hypercorn==0.18.*``; ``tests/unit/server/test_http11.py`` fails loudly when
the methods overridden here change shape.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import hypercorn.protocol
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol

__all__ = ["GuardedH11Protocol", "install", "OVERRIDDEN", "CONTINUE", "Refused", "log_refusal",
           "IdleConnections"]

# Set by the protocol for the request it hands to the app (the app's task inherits it):
# sends the deferred ``100 Continue``, if the client is still waiting for one.
CONTINUE: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = \
    contextvars.ContextVar("sidecar_send_continue", default=None)

log = logging.getLogger("sidecar.server.listen")

Refused = Callable[..., None]  # (outcome, **facts for the log line)


def log_refusal(outcome: str, **facts: object) -> None:
    """A request refused before the app: one ``request.refused`` line.  A listener adds
    counting (``sidecar.server.listen``) and hands the result here and to the guard."""
    log.info("request.refused", extra={"outcome": outcome, **facts})

# What the subclass overrides, with the parameters Hypercorn 0.18 gives each.
OVERRIDDEN = {
    "initiate": ["self"],
    "handle": ["self", "event"],
    "_create_stream": ["self", "request"],
    "_maybe_recycle": ["self"],
    "_check_protocol": ["self", "event"],
    "_send_h11_event": ["self", "event"],
    "_send_error_response": ["self", "status_code"],
}

# What h11 refuses before any app sees the request, as the outcome counted and logged.
_H11_REFUSALS = {431: "header_limit", 501: "not_implemented"}


class GuardedH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol with a header deadline, no switch to HTTP/2, one
    write per response, and a client's close ending the connection."""

    _header_deadline: asyncio.TimerHandle | None = None
    _held_head = b""
    _readmit: Callable[[], tuple[int, str] | None] | None = None
    _writer: Any = None
    _client_closed = False
    _idle: IdleConnections | None = None
    _idle_timer: asyncio.TimerHandle | None = None
    _idle_handed_over = False
    _send_to_server: Callable[[Event], Awaitable[None]] | None = None

    async def initiate(self) -> None:
        await super().initiate()
        # The connection's stream writer, through Hypercorn's TCPServer (``self.send`` is
        # its bound ``protocol_send``).
        writer = getattr(getattr(self.send, "__self__", None), "writer", None)
        self._writer = writer
        release = None
        if self.ssl:
            # Its TLS object: the holder's ``IdentityCheckedSSLObject``.
            ssl_object = writer.get_extra_info("ssl_object") if writer is not None else None
            self._readmit = getattr(ssl_object, "readmit", None)
            release = getattr(ssl_object, "release", None)
        self._idle = getattr(self.config, "idle_connections", None)
        if self._idle is not None:
            # Hypercorn's idle task times the wait for the first request (TCPServer starts
            # it after this); the first ``Updated`` stops it, and each idle wait after that
            # is timed here (see "one timer" in the module docstring).
            self._send_to_server = self.send
            self.send = self._send
        task = asyncio.current_task()
        if task is not None:
            # The connection's task ends after Hypercorn has closed its socket (the
            # ``finally`` of ``TCPServer.run``, this coroutine's caller): its slot in
            # ``limits.max_connections`` is free from then, not when the collector gets to
            # its objects; and its idle timer goes, however the connection ended.
            task.add_done_callback(lambda _: self._ended(release))
        self._arm_header_deadline()  # the first request's head, from the connection's start

    def _ended(self, release: Callable[[], None] | None) -> None:
        self._cancel_idle_timer()
        if release is not None:
            release()

    async def _send(self, event: Event) -> None:
        """What the protocol tells Hypercorn's TCPServer, less the ``Updated`` events,
        which start and stop the idle timer here (after the first)."""
        assert self._send_to_server is not None
        if type(event) is Updated:
            if not self._idle_handed_over:
                self._idle_handed_over = True
                await self._send_to_server(Updated(idle=False))  # stops Hypercorn's task
            if event.idle:
                self._arm_idle_timer()
            else:
                self._cancel_idle_timer()
            return
        if type(event) is Closed:
            self._cancel_idle_timer()
        await self._send_to_server(event)

    def _closing(self) -> bool:
        return self._writer is not None and self._writer.is_closing()

    async def handle(self, event: Event) -> None:
        if isinstance(event, RawData) and not event.data:
            self._client_closed = True  # Hypercorn passes the end of the stream on as b""
        if isinstance(event, RawData):
            if self.stream is None and self._header_deadline is None:
                self._arm_header_deadline()  # the first bytes of the next request
        elif isinstance(event, Closed):
            self._cancel_header_deadline()
        await super().handle(event)
        if isinstance(event, Closed) and self.stream is None:
            await self.send(Closed())  # see "a client's close" in the module docstring

    async def _create_stream(self, request: Any) -> None:
        self._cancel_header_deadline()  # the head is complete
        refusal = self._readmit() if self._readmit is not None else None
        if refusal is not None:
            # The TLS policy changed since this connection's handshake and no longer
            # admits it: answered without the app, and closed (Hypercorn's own way of
            # refusing a request it cannot serve; the body, if any, is never read).
            status, reason = refusal
            self._refused("admission_withdrawn", status=status, reason=reason)
            await super()._send_error_response(status)
            await self.send(Closed())
            return
        CONTINUE.set(self._send_continue)  # for this request's app task (a copy)
        if not request.method.isupper():
            # Methods are case-sensitive (RFC 9110 §9.1) and Hypercorn upper-cases them:
            # ``post`` would be served as POST.  Given a name no app knows, it is answered
            # as any other unknown method (405 on the webhook path, else 404).
            request = h11.Request(method=b"X-NOT-UPPER-CASE", target=request.target,
                                  headers=request.headers, http_version=request.http_version)
        await super()._create_stream(request)

    async def _maybe_recycle(self) -> None:
        await super()._maybe_recycle()
        if (self.stream is None and self.connection.our_state is h11.IDLE
                and self.connection.trailing_data[0]):
            # Part of a pipelined request arrived with the last one: its clock starts now
            # (not on a connection that is closing: nothing more will be read there).
            self._arm_header_deadline()

    async def _send_error_response(self, status_code: int) -> None:
        # Hypercorn's answer to what h11 cannot parse (a bad head or chunk, a transfer
        # coding other than chunked, a head past h11_max_incomplete_size): counted and
        # logged like the guard's refusals.
        if not (self._closing() or self._client_closed or self.stream is not None):
            # Not counted: what h11 finds unfinished when the connection ends (this side
            # closed it at the header deadline, counted then; the client went away), or
            # the body of a request the app is handling (the app counts its outcome).
            self._refused(_H11_REFUSALS.get(status_code, "malformed_request"),
                          status=status_code)
        await super()._send_error_response(status_code)

    def _refused(self, outcome: str, **facts: object) -> None:
        refused: Refused = getattr(self.config, "on_refused", log_refusal)
        refused(outcome, **facts)

    async def _check_protocol(self, event: Any) -> None:
        return None  # never h2c, never the HTTP/2 preface: see the module docstring

    async def _send_h11_event(self, event: Any) -> None:
        # As Hypercorn's, except that a final response's head is held until its first body
        # bytes (or its end), so both go out in one write: one TLS record and one send
        # instead of two (Hypercorn writes each h11 event on its own, an empty end
        # included).  Every app here sends its body right after the head.
        if type(event) is h11.InformationalResponse and event.status_code == 100:
            return  # deferred until the app asks for the body (_send_continue)
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if type(event) is h11.Response:
            self._held_head = data
            return
        if self._held_head:
            data, self._held_head = self._held_head + data, b""
        if data and not self._closing():
            # (Written to a TLS connection the client has closed, asyncio's transport
            # raises AttributeError, which Hypercorn logs as an application error; the
            # bytes have nowhere to go either way.)
            await self.send(RawData(data=data))

    async def _send_continue(self) -> None:
        if not self.connection.they_are_waiting_for_100_continue or self._held_head \
                or self._closing():
            return  # the body is on its way already, the answer has begun, or no one waits
        try:
            data = self.connection.send(h11.InformationalResponse(
                status_code=100, headers=self.config.response_headers("h11")))
        except h11.LocalProtocolError:
            return
        await self.send(RawData(data=data))

    # ------------------------------------------------------------------ idle keep-alive

    def _arm_idle_timer(self) -> None:
        assert self._idle is not None
        self._cancel_idle_timer()
        if self._idle.stopping.is_set():
            self._close_idle()  # a stop closes idle connections (Hypercorn's rule)
            return
        self._idle.connections.add(self)
        timeout_s = self.config.keep_alive_timeout
        if timeout_s is not None:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout_s,
                                                                     self._close_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._idle is not None:
            self._idle.connections.discard(self)

    def _close_idle(self) -> None:
        self._cancel_idle_timer()
        try:
            self.task_group.spawn(self._close_if_idle)
        except RuntimeError:
            pass  # the connection's task group already ended

    async def _close_if_idle(self) -> None:
        # As Hypercorn's idle task ends a connection (``TCPServer._initiate_server_close``:
        # the protocol handles ``Closed``, which here closes the socket, see ``handle``),
        # unless a request was parsed since the timer fired (it arrived in the same turn
        # of the loop, or was pipelined behind the last one): that one is served.
        if self.stream is None:
            await self.handle(Closed())

    # ------------------------------------------------------------------ deadline

    def _arm_header_deadline(self) -> None:
        timeout_s = getattr(self.config, "header_timeout_s", None)
        if timeout_s is None:
            return
        self._cancel_header_deadline()
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(timeout_s, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.stream is None:
            self._refused("header_timeout")
            try:
                self.task_group.spawn(self.send, Closed())
            except RuntimeError:
                pass  # the connection's task group already ended (cancelled at a stop)


class IdleConnections:
    """A listener's kept-alive connections waiting for their next request, so that a stop
    closes them at once (``close_all``); ``stopping`` is the listener's stop.  (Hypercorn
    also drains when its ``max_requests`` is reached; the sidecar never sets it, so its
    listeners stop only through ``stopping``.)"""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        self.connections: set[GuardedH11Protocol] = set()

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection._close_idle()


def install() -> None:
    """Make Hypercorn build ``GuardedH11Protocol`` for HTTP/1.1 connections (idempotent)."""
    current = hypercorn.protocol.H11Protocol  # type: ignore[attr-defined]
    if current is GuardedH11Protocol:
        return
    if current is not H11Protocol:
        raise RuntimeError("hypercorn.protocol.H11Protocol was replaced by someone else")
    for name, params in OVERRIDDEN.items():
        found = list(inspect.signature(getattr(H11Protocol, name)).parameters)
        if found != params:
            raise RuntimeError(f"Hypercorn's H11Protocol.{name}{tuple(found)} is not the one "
                               "sidecar.server.http11 was written for (hypercorn 0.18)")
    hypercorn.protocol.H11Protocol = GuardedH11Protocol  # type: ignore[attr-defined]
