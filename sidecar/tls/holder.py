"""The live TLS state of the public listener, and its validated hot reload.

The listener gets one *listener* context for its whole life, and hands every new
connection to the context of the current state (its ``wrap_bio``): new server
certificate, new client-CA store, new ``verify_mode`` (``tls.client_auth``).  A CA dropped
from the config is therefore no longer trusted, and since each context has its own
session cache, no TLS 1.2 session verified against the old CA set can be resumed after
the swap (a resumed session skips the chain check).  A hook on every context makes the
identity check part of the handshake: ``sslobject_class`` is a ``ssl.SSLObject``
subclass whose ``do_handshake`` — once OpenSSL has verified the chain — checks the
client identity against the current policy and refuses the handshake when it is not
allowed, before any HTTP byte is read.  A resumed TLS 1.2 session is not re-verified by
OpenSSL, so the hook also refuses one whose certificate has expired since.

The same hook enforces ``limits.max_connections``: a connection is counted from its
first ``do_handshake`` call, which the event loop makes right after ``accept`` (before
the ClientHello is read), until it is released: when its handshake fails, when the
server is done with it (``sidecar.server.http11``: the end of the connection's task,
its socket closed), or else when its ``SSLObject`` is collected (a ``weakref.finalize``);
past the cap it is refused there, so an overload costs no crypto.  Counting from accept,
not from the end of the handshake, bounds the file descriptors the public listener can
hold (an idle TCP connection that never sends a ClientHello holds one too):
``sidecar.server.fds`` sizes ``RLIMIT_NOFILE`` for the cap.  A connection is released
once the server has closed it — one that never finishes its handshake at the handshake
timeout, one that vanished without a TLS close_notify at the latest when the idle
timeout fires.  Only a connection that never reached HTTP (a handshake timed out)
waits for the cyclic collector, which is run before refusing anyone.

The same object refuses application data that arrives after its own close_notify
(``unwrap``), as OpenSSL does inside ``SSL_shutdown``: uvloop's TLS transport would read
and drop it until its shutdown timeout.

``reload()`` follows ghostunnel: build a complete new ``TLSState``, validate it, then
swap one attribute.  On failure the old state keeps serving.  Each connection remembers
the state that admitted it; ``readmit`` (asked before every request) judges one admitted
by an older state by the current one, so a reload that tightens the policy reaches the
connections already open too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NoReturn
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sidecar.config import TLSConfig
from sidecar.tls.identity import IdentityPolicy, peer_names
from sidecar.tls.material import TLSMaterial, build_context, load_material

__all__ = ["TLSState", "TLSHolder", "HandshakeRefused"]

log = logging.getLogger("sidecar.tls")


class HandshakeRefused(ssl.SSLCertVerificationError):
    """Raised inside the handshake when the client identity is not admitted."""


@dataclass(frozen=True, slots=True)
class TLSState:
    material: TLSMaterial
    context: ssl.SSLContext
    policy: IdentityPolicy
    require_client_cert: bool
    generation: int


class TLSHolder:
    def __init__(
        self,
        tls: TLSConfig,
        *,
        on_refused: Callable[[str, dict[str, object]], None] | None = None,
        max_connections: int | None = None,
        on_connections: Callable[[int], None] | None = None,
        handshake_timeout_s: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        """``handshake_timeout_s`` is the listener's (``limits.header_timeout_s``): by
        then a connection still in its handshake has been closed by the event loop."""
        self._now = now
        self._handshake_timeout_s = handshake_timeout_s
        # (reason, facts for the log): a label-sized reason, and what the client presented
        self._on_refused = on_refused or (lambda reason, facts: None)
        self._max_connections = max_connections
        self._on_connections = on_connections or (lambda count: None)
        self._admitted = 0
        self._released = 0
        self._admit_lock = threading.Lock()
        self._last_collect = 0.0
        self._sslobject_cls = self._sslobject_class()
        # The constructor validates once: broken material fails at startup, not later.
        self.state = self._build(tls, generation=1)

    def _build(self, tls: TLSConfig, *, generation: int) -> TLSState:
        material = load_material(tls, now=self._now())
        require = tls.client_auth == "required"
        context = build_context(material, require_client_cert=require)
        context.sslobject_class = self._sslobject_cls
        state = TLSState(
            material=material,
            context=context,
            policy=IdentityPolicy(tls.allowed_client_names),
            require_client_cert=require,
            generation=generation,
        )
        context.sidecar_state = state  # type: ignore[attr-defined]  # see _made_by
        return state

    def reload(self, tls: TLSConfig) -> bool:
        """Swap in new material/policy if anything changed.  Returns True when swapped.

        Raises ``TLSMaterialError`` (old state kept) when the new material is invalid.
        """
        old = self.state
        new = self._build(tls, generation=old.generation + 1)
        if (new.material.digest == old.material.digest and new.policy.allowed_names
                == old.policy.allowed_names and new.require_client_cert == old.require_client_cert):
            return False
        self.state = new
        return True

    # ------------------------------------------------------------------ listener

    def listener_context(self) -> ssl.SSLContext:
        """The context handed to the server once; each new connection gets the context
        of ``self.state`` at the moment it starts."""
        ctx = build_context(self.state.material, require_client_cert=True,
                            context_class=_ListenerContext)
        assert isinstance(ctx, _ListenerContext)
        ctx.holder = self
        # Never used for a handshake while transports call wrap_bio; if one ever did not,
        # the identity check and a required certificate would still apply (fail closed).
        ctx.sslobject_class = self._sslobject_cls
        return ctx

    def _sslobject_class(self) -> type[ssl.SSLObject]:
        holder = self

        class IdentityCheckedSSLObject(ssl.SSLObject):
            _counted = False
            _closing = False
            _failed: ssl.SSLError | None = None
            _outgoing: ssl.MemoryBIO | None = None  # set by the listener context
            _release: weakref.finalize[..., None] | None = None  # set by admit_connection

            def unwrap(self) -> None:
                self._closing = True  # our close_notify is being sent
                super().unwrap()

            def read(self, len: int = 1024, buffer: Any = None) -> Any:
                data = super().read(len, buffer)
                if data and self._closing:
                    # Application data after our close_notify: OpenSSL refuses it in
                    # SSL_shutdown (asyncio's transport then closes at once), but uvloop
                    # reads and drops it until its 30 s shutdown timeout, so a client that
                    # goes on sending after its answer keeps a core busy.  Refused here.
                    raise ssl.SSLError("application data after close_notify")
                return data

            def do_handshake(self) -> None:
                if self._failed is not None:
                    self.release()
                    raise self._failed  # its alert has been sent: the connection ends
                if not self._counted:
                    # The first call comes right after accept, before the ClientHello is
                    # read: the connection counts from here, and past the cap it is
                    # refused here, before any crypto is spent on it.
                    self._counted = True
                    holder.admit_connection(self)
                try:
                    super().do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    raise
                except ssl.SSLError as exc:
                    holder._report_refusal(_reason(exc), {"error": _error_text(exc)})
                    if self._outgoing is not None and exc.reason == "HTTP_REQUEST":
                        # Plain HTTP on the TLS port (a mistyped http:// URL): told so in
                        # plain HTTP, as nginx does, instead of a silent close.
                        self._outgoing.write(_PLAIN_HTTP_ANSWER)
                    if self._outgoing is not None and self._outgoing.pending:
                        # OpenSSL wrote the alert that says why (certificate required,
                        # unknown CA, protocol version), but the event loop's transport
                        # would close without sending it: asked to wait for more input
                        # instead, it sends what is pending first.  The next call (the
                        # client's next bytes) raises; the client's close, or the
                        # handshake timeout, ends it otherwise.  It stays counted until
                        # then, like any connection still open, and no longer: nothing
                        # calls this object at a close, so its slot is freed at the
                        # handshake timeout at the latest.  Kept without its traceback,
                        # which would tie this object into a cycle (the frame holds it).
                        self._failed = exc.with_traceback(None)
                        if self._release is not None:
                            # The finalizer, not this object: a flood of refused
                            # handshakes must not keep their TLS objects alive for it.
                            asyncio.get_running_loop().call_later(
                                holder._handshake_timeout_s + 1.0, self._release)
                        raise ssl.SSLWantReadError("alert pending") from None
                    self.release()  # the transport closes the connection now
                    raise
                try:
                    holder.check_peer(self)
                except HandshakeRefused:
                    self.release()
                    raise

            def release(self) -> None:
                """This connection is closed: its slot is free (once, however often
                asked; else when the object is collected)."""
                if self._release is not None:
                    self._release()

            def readmit(self) -> tuple[int, str] | None:
                """Before each request: None when the current policy still admits this
                connection, else the status to refuse it with, and why
                (``TLSHolder.readmit``)."""
                return holder.readmit(self)

        return IdentityCheckedSSLObject

    @property
    def active_connections(self) -> int:
        return self._admitted - self._released

    def check_capacity(self) -> None:
        """Refuse when the cap is already reached, without counting anything
        (``admit_connection`` counts)."""
        limit = self._max_connections
        if limit is None or self.active_connections < limit:
            return
        self._collect_released()
        if self.active_connections >= limit:
            self._refuse_over_capacity(limit)

    def _refuse_over_capacity(self, limit: int) -> NoReturn:
        self._report_refusal("too_many_connections", {"limit": limit})
        raise HandshakeRefused("connection limit reached")

    def _report_refusal(self, reason: str, facts: dict[str, object]) -> None:
        # Runs inside the handshake, where the loop only expects ssl.SSLError: a failing
        # report (metrics, logging) must not change what happens to the connection.
        try:
            self._on_refused(reason, facts)
        except Exception:
            log.exception("tls.refusal_report_failed", extra={"reason": reason})

    def _collect_released(self) -> None:
        # Closed connections' SSLObjects can sit in reference cycles (transport ↔
        # protocol) until the cyclic collector runs; at the cap, run it (at most once a
        # second) before refusing anyone.
        now = time.monotonic()
        if now - self._last_collect >= 1.0:
            self._last_collect = now
            gc.collect()

    def admit_connection(self, sslobj: ssl.SSLObject) -> None:
        """Count a new connection, or refuse it past ``max_connections``."""
        limit = self._max_connections
        if limit is not None and self.active_connections >= limit:
            self._collect_released()
        with self._admit_lock:  # only admissions race each other; releases never block
            refused = limit is not None and self.active_connections >= limit
            if not refused:
                self._admitted += 1
        if refused:
            assert limit is not None
            self._refuse_over_capacity(limit)
        self._on_connections(self.active_connections)
        # Runs once: from the connection's ``release()`` when the server is done with it,
        # else when the object is collected.
        sslobj._release = weakref.finalize(  # type: ignore[attr-defined]
            sslobj, self._release_connection)

    def _release_connection(self) -> None:
        # Runs on the loop's thread (``release()``) or from the garbage collector, possibly
        # in the middle of other code on this thread (even inside admit_connection): it
        # must take no lock.  Only this writes the counter, and never twice at once.
        self._released += 1
        self._on_connections(self.active_connections)

    def check_peer(self, sslobj: ssl.SSLObject) -> None:
        state = self.state
        peer = sslobj.getpeercert()
        refusal = _policy_refusal(peer, state)
        if refusal == "no_certificate":
            self._report_refusal("no_certificate", {})
            raise HandshakeRefused("client certificate required")
        if refusal == "name_not_allowed":
            assert peer
            cns, sans = peer_names(peer)
            # What it presented, so a wrong name can be told from a wrong config.  The
            # certificate chains to a trusted CA, but is bounded anyway.
            self._report_refusal("name_not_allowed", {"common_names": _bounded(cns),
                                                      "dns_names": _bounded(sans)})
            raise HandshakeRefused("client certificate name not allowed")
        if peer and sslobj.session_reused and _expired(peer, time.time()):
            # A resumed TLS 1.2 session skips the chain check, validity included: the
            # certificate was valid when the session was made, and has expired since.
            # Refused as a full handshake would refuse it.
            self._report_refusal("untrusted_certificate",
                                 {"error": "certificate has expired (resumed session)"})
            raise HandshakeRefused("client certificate expired")
        sslobj._admitted_by = _made_by(sslobj, state)  # type: ignore[attr-defined]

    def readmit(self, sslobj: ssl.SSLObject) -> tuple[int, str] | None:
        """A connection admitted before a reload, judged again by the policy in force:
        None when it is still admitted, else ``(status, reason)`` for its next request
        (the connection is then closed).  A reload never drops connections, but one that
        switched ``tls.client_auth`` to ``required`` or removed a name must not leave a
        kept-alive connection admitted by the old rules.  A client CA removed is judged
        from the leaf alone (the chain it came with is not kept): issued directly by a
        CA still trusted, it stays; otherwise 421, so that the client's next try makes a
        new connection, whose handshake decides.  A CA added, or the same CAs written
        differently, changes nothing.  One comparison per request while the policy is
        unchanged."""
        state = self.state
        admitted_by: TLSState | None = getattr(sslobj, "_admitted_by", None)
        if admitted_by is state:
            return None
        if admitted_by is None:
            return 403, "not_admitted"  # never through check_peer: fail closed
        peer = sslobj.getpeercert()
        refusal = _policy_refusal(peer, state)
        if refusal is not None:
            return 403, refusal
        if (peer and not _fingerprints(state) >= _fingerprints(admitted_by)
                and not _issued_by_a_client_ca(sslobj, state)):
            return 421, "client_ca_removed"
        sslobj._admitted_by = state  # type: ignore[attr-defined]
        return None

def _policy_refusal(peer: dict[str, Any] | None, state: TLSState) -> str | None:
    """What the identity policy of ``state`` says to this peer: ``no_certificate``,
    ``name_not_allowed``, or None (admitted).  The handshake and ``readmit`` both ask."""
    if not peer:
        return "no_certificate" if state.require_client_cert else None
    return None if state.policy.allows(peer) else "name_not_allowed"


def _issued_by_a_client_ca(sslobj: ssl.SSLObject, state: TLSState) -> bool:
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return False
    leaf = x509.load_der_x509_certificate(der)
    for ca in state.material.client_ca_certs:
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _fingerprints(state: TLSState) -> frozenset[str]:
    return frozenset(ca.sha256 for ca in state.material.client_cas)


class _ListenerContext(ssl.SSLContext):
    """The listener's context: a complete server context (so nothing that inspects it is
    surprised), but connections are made from the current state's context.  Asyncio's
    and uvloop's TLS transports create every connection through ``wrap_bio``."""

    holder: TLSHolder

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        sslobj = self.holder.state.context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
            session=session)
        sslobj._outgoing = outgoing  # type: ignore[attr-defined]  # (its alert, below)
        return sslobj


def _made_by(sslobj: ssl.SSLObject, current: TLSState) -> TLSState:
    """The state whose context made ``sslobj``: its chain was verified against that
    state's CAs, even when a reload swapped the state during the handshake (the names
    and ``client_auth`` were checked against ``current``)."""
    made: TLSState | None = getattr(sslobj.context, "sidecar_state", None)
    return made if made is not None else current


def _error_text(exc: ssl.SSLError) -> str:
    verify = getattr(exc, "verify_message", None)  # "unable to get local issuer certificate"
    return str(verify or exc.reason or type(exc).__name__)


def _expired(peer: Mapping[str, object], now: float) -> bool:
    not_after = peer.get("notAfter")
    # OpenSSL's own check: valid through the notAfter second itself.
    return not isinstance(not_after, str) or ssl.cert_time_to_seconds(not_after) < now


def _bounded(names: list[str], count: int = 5, length: int = 100) -> list[str]:
    return [name[:length] for name in names[:count]]


_PLAIN_HTTP_BODY = b"This port speaks HTTPS only (mutual TLS).\n"
_PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY))


def _reason(exc: ssl.SSLError) -> str:
    text = (exc.reason or str(exc)).upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
        return "no_certificate"
    if "CERTIFICATE_VERIFY_FAILED" in text or "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text:
        return "untrusted_certificate"
    if "VERSION" in text or "PROTOCOL" in text:
        return "protocol"
    if "HTTP_REQUEST" in text:
        return "plain_http"
    return "other"

