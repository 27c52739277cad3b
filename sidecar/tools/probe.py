"""Try a real mTLS handshake (and optionally Meta's verification GET) against an endpoint.

Used by ``sidecar certs probe`` and ``sidecar subscriptions check --probe``, so both
judge an endpoint the same way.  It speaks stdlib ``ssl`` + ``socket`` and one HTTP/1.1
GET framed by h11 (the codec under httpx) instead of httpx itself, because the question
is *where* a refusal happened: with TLS 1.3 the handshake completes before the server has
checked the client certificate, so only an HTTP answer proves acceptance, and an EOF,
reset or alert after the handshake means refusal.  An HTTP client library hides that
distinction.

``probe`` raises ``UsageError`` / ``TLSMaterialError`` for bad local input (URL, the
client pair, the CA bundle) and never raises for what the network or the server does:
that goes into the ``ProbeReport``.  The verify token is never part of the report:
``ProbeReport.url`` shows it as ``hub.verify_token=***``.
"""

from __future__ import annotations

import secrets
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
from cryptography import x509

from sidecar.errors import TLSMaterialError, UsageError
from sidecar.logs import redact_query
from sidecar.secret import Secret
from sidecar.tls.client_pair import load_client_pair
from sidecar.tls.client_pair import reason_of as _reason_of
from sidecar.tls.material import cert_facts, read_pem_certs

__all__ = ["DEFAULT_TIMEOUT_S", "ProbeReport", "Target", "parse_target", "probe"]

DEFAULT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str  # path + query as sent (may hold the token: never print it)

    @property
    def shown_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return redact_query(f"https://{host}:{self.port}{self.path}")


@dataclass(slots=True)
class ProbeReport:
    url: str  # redacted
    client_cert: str | None  # subject of the certificate presented, if any
    connected: bool = False
    protocol: str | None = None
    cipher: str | None = None
    server_chain: list[dict[str, Any]] = field(default_factory=list)
    accepted: bool | None = None
    http_status: int | None = None
    verification_ok: bool | None = None
    ok: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "url": self.url, "reason": self.reason,
                "connected": self.connected, "protocol": self.protocol, "cipher": self.cipher,
                "server_chain": self.server_chain, "client_cert": self.client_cert,
                "accepted": self.accepted, "http_status": self.http_status,
                "verification_ok": self.verification_ok}


@dataclass(frozen=True, slots=True)
class _HTTPAnswer:
    status: int
    body: bytes


class _Refused(Exception):
    """The server ended the connection instead of answering the request."""


def probe(url: str, *, cert: Path | None = None, key: Path | None = None,
          ca: Path | None = None, verify_token: Secret | None = None,
          timeout_s: float = DEFAULT_TIMEOUT_S, challenge: str | None = None) -> ProbeReport:
    """Connect to ``url``, handshake (with the client pair ``cert``/``key`` if given,
    trusting ``ca`` or the system store), send one GET and judge the answer.

    With ``verify_token`` the GET is Meta's verification request and ``ok`` needs 200 with
    the challenge as body; without it any HTTP answer means the client was accepted.
    """
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together (omit both to probe without a client "
                         "certificate)")
    challenge = challenge or str(secrets.randbelow(9 * 10**9) + 10**9)
    target = parse_target(url, verify_token, challenge)
    context = _client_context(cert, key, ca)
    client_subject = _client_subject(cert) if cert is not None else None
    return _probe_target(target, context, client_subject, verify_token is not None,
                         challenge, timeout_s)


def parse_target(url: str, verify_token: Secret | None, challenge: str) -> Target:
    """``https://host[:port]/path`` → Target; with a token, the verification query is added."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise UsageError("URL: not a valid https://host[:port]/path URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise UsageError(f"URL {redact_query(url)}: must be https://host[:port]/path")
    path = parts.path or "/"
    query = parts.query
    if verify_token is not None:
        extra = urlencode({"hub.mode": "subscribe", "hub.verify_token": verify_token.reveal(),
                           "hub.challenge": challenge})
        query = f"{query}&{extra}" if query else extra
    return Target(parts.hostname, port, f"{path}?{query}" if query else path)


def _client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSMaterialError(f"--ca {ca}: cannot load the CA bundle "
                               f"({_reason_of(exc)})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        load_client_pair(context, cert, key)
    return context


def _client_subject(cert: Path) -> str:
    _, certs = read_pem_certs(cert, "--cert")
    return certs[0].subject.rfc4514_string()


def _probe_target(target: Target, context: ssl.SSLContext, client_subject: str | None,
                  with_token: bool, challenge: str, timeout_s: float) -> ProbeReport:
    """Connect, handshake, send one GET; never raises for what the network does."""
    report = ProbeReport(target.shown_url, client_subject)
    try:
        raw = socket.create_connection((target.host, target.port), timeout=timeout_s)
    except OSError as exc:
        report.reason = f"cannot connect to {target.host}:{target.port} ({_reason_of(exc)})"
        return report
    report.connected = True
    with raw:
        tls = _handshake(raw, context, target.host, report)
        if tls is None:
            return report
        with tls:
            _describe_session(tls, report)
            answer = _exchange(tls, target, report)
    if answer is not None:
        _judge(answer, with_token, challenge, report)
    return report


def _handshake(raw: socket.socket, context: ssl.SSLContext, host: str,
               report: ProbeReport) -> ssl.SSLSocket | None:
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        report.reason = f"server certificate not trusted ({exc.verify_message}); pass --ca " \
                        "with the CA that issued it"
    except ssl.SSLError as exc:
        report.accepted = False if _is_alert(exc) else None
        who = "the client certificate" if report.client_cert else "a client without certificate"
        report.reason = (f"refused in the TLS handshake ({_reason_of(exc)}); the server "
                         f"did not accept {who}" if _is_alert(exc)
                         else f"TLS handshake failed ({_reason_of(exc)})")
    except (TimeoutError, socket.timeout):
        report.reason = "TLS handshake timed out"
    except OSError as exc:
        report.accepted = False
        report.reason = f"connection closed during the TLS handshake ({_reason_of(exc)})"
    return None


def _describe_session(tls: ssl.SSLSocket, report: ProbeReport) -> None:
    report.protocol = tls.version()
    cipher = tls.cipher()
    report.cipher = f"{cipher[0]} ({cipher[2]} bits)" if cipher else None
    der = tls.getpeercert(binary_form=True)
    if der:
        report.server_chain.append(_server_cert_json(der))


def _server_cert_json(der: bytes) -> dict[str, Any]:
    facts = cert_facts(x509.load_der_x509_certificate(der), "<server>")
    now = datetime.now(timezone.utc)
    return {"subject": facts.subject, "sans": list(facts.sans), "issuer": facts.issuer,
            "not_before": facts.not_before.isoformat(), "not_after": facts.not_after.isoformat(),
            "days_left": round(facts.seconds_left(now) / 86400, 2), "sha256": facts.sha256}


def _exchange(tls: ssl.SSLSocket, target: Target, report: ProbeReport) -> _HTTPAnswer | None:
    """TLS 1.3: the handshake ends before the server checked our certificate, so only an
    HTTP answer proves acceptance; EOF, a reset or an alert mean refusal."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
    request = h11.Request(method="GET", target=target.path, headers=[
        ("Host", f"{host}:{target.port}"), ("User-Agent", "sidecar-certs-probe"),
        ("Accept", "*/*"), ("Connection", "close")])
    try:
        tls.sendall(http.send(request) + http.send(h11.EndOfMessage()))
        return _read_answer(tls, http)
    except (TimeoutError, socket.timeout):
        report.reason = "no HTTP answer before the timeout"
    except (_Refused, ssl.SSLError, ConnectionError) as exc:
        report.accepted = False
        who = "the client certificate" if report.client_cert else "a client without certificate"
        detail = f" ({_reason_of(exc)})" if not isinstance(exc, _Refused) else f" ({exc})"
        report.reason = f"refused: the server did not accept {who}{detail}"
    except OSError as exc:
        report.reason = f"connection failed after the handshake ({_reason_of(exc)})"
    except h11.ProtocolError as exc:
        report.accepted = True
        report.reason = f"the server's answer is not HTTP/1.x ({exc})"
    return None


def _read_answer(tls: ssl.SSLSocket, http: h11.Connection) -> _HTTPAnswer:
    status: int | None = None
    body = bytearray()
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLError, ConnectionError):
                if status is None:
                    raise
                chunk = b""  # some servers end a Connection: close answer without close_notify
            if not chunk and status is None and not http.trailing_data[0]:
                raise _Refused("connection closed without an answer")
            http.receive_data(chunk)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            if len(body) + len(event.data) > MAX_RESPONSE_BYTES:
                raise h11.RemoteProtocolError("response body too large")
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            if status is None:
                raise _Refused("connection closed without an answer")
            return _HTTPAnswer(status, bytes(body))


def _judge(answer: _HTTPAnswer, with_token: bool, challenge: str, report: ProbeReport) -> None:
    report.accepted = True
    report.http_status = answer.status
    if not with_token:
        report.ok = True
        report.reason = f"accepted: the server answered HTTP {answer.status}"
        return
    report.verification_ok = answer.status == 200 and answer.body == challenge.encode()
    report.ok = report.verification_ok
    if report.verification_ok:
        report.reason = "accepted: the verification GET was answered with the challenge"
    elif answer.status != 200:
        report.reason = (f"accepted, but the verification GET was answered HTTP "
                         f"{answer.status} (expected 200 with the challenge; wrong token?)")
    else:
        report.reason = (f"accepted, but the 200 answer ({len(answer.body)} bytes) is not the "
                         "challenge")


def _is_alert(exc: ssl.SSLError) -> bool:
    return "ALERT" in (exc.reason or "").upper() or "alert" in str(exc)
