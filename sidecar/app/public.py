"""The public webhook endpoint: the checks of docs/checks.md, one call per check.

Client identity was already checked in the TLS handshake (``sidecar.tls.holder``);
nothing reaches this app from a client that is not admitted.  Then, for a POST:
read the body (size limit, time limit) → verify the signature over the raw bytes →
parse and check the envelope → normalize → hand to the ingest (spool or direct).
A GET is Meta's verification handshake.  Nothing here is forwarded or stored unless
every check before it passed.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.app.budget import BodyBudget, BodyHold
from sidecar.app.responses import error_response
from sidecar.checks.payload import parse_envelopes
from sidecar.checks.signature import SignatureVerifier
from sidecar.delivery.ingest import Ingest
from sidecar.errors import (
    BadPayload,
    BodyTimeout,
    BodyTooLarge,
    Overloaded,
    RequestRejected,
    SidecarError,
    SignatureInvalid,
    Unavailable,
)
from sidecar.logs import Throttle
from sidecar.metrics import Metrics
from sidecar.normalize import Bounds, normalize
from sidecar.secret import Secret
from sidecar.spool.parts import measure

__all__ = ["RequestSettings", "build_public_app", "MAX_CHALLENGE_LENGTH"]

log = logging.getLogger("sidecar.request")

MAX_CHALLENGE_LENGTH = 1024
UNAVAILABLE_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """What a reload may change for requests (secrets, token, unknown-field policy)."""

    verifier: SignatureVerifier
    verify_token: Secret
    unknown_fields: str


def build_public_app(
    *,
    path: str,
    settings: Callable[[], RequestSettings],
    ingest: Ingest,
    metrics: Metrics,
    max_body_bytes: int,
    body_timeout_s: float,
    max_events_per_delivery: int = 1000,
    budget: BodyBudget | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> ASGIApp:
    budget = budget or BodyBudget(2**62)
    unavailable_logs = Throttle(UNAVAILABLE_LOG_INTERVAL_S)

    async def verify_subscription(request: Request) -> Response:
        params = request.query_params
        token = params.get("hub.verify_token")
        expected = settings().verify_token.reveal().encode("utf-8")
        token_ok = token is not None and hmac.compare_digest(token.encode("utf-8"), expected)
        if params.get("hub.mode") != "subscribe" or not token_ok:
            return _outcome(metrics, "verify_refused",
                            PlainTextResponse("Forbidden", status_code=403))
        challenge = params.get("hub.challenge")
        if not challenge or len(challenge) > MAX_CHALLENGE_LENGTH:
            return _outcome(metrics, "verify_bad_request", error_response(
                BadPayload("hub.challenge missing or too long")))
        # The challenge is the client's text, echoed: never to be sniffed as HTML.
        return _outcome(metrics, "verified", PlainTextResponse(
            challenge, headers={"X-Content-Type-Options": "nosniff"}))

    async def receive_delivery(request: Request) -> Response:
        hold = budget.hold()
        try:
            return await _checked_delivery(request, hold)
        finally:
            hold.release()  # what the body became is gone with the answer

    async def _checked_delivery(request: Request, hold: BodyHold) -> Response:
        received_at = clock()
        try:
            body = await _read_body(request, max_body_bytes, body_timeout_s, hold)
            current = settings()
            try:
                current.verifier.verify(body, request.headers.getlist("x-hub-signature-256"))
            except SignatureInvalid:
                metrics.signature_failures.inc()
                raise
            envelopes = parse_envelopes(body)
            bounds = Bounds(max_events=max_events_per_delivery, body_bytes=len(body),
                            measure=measure)
            del body  # the parsed form replaces it while the commit is awaited
            normalized = normalize(envelopes, received_at=received_at,
                                   unknown_fields=current.unknown_fields, bounds=bounds)
            await ingest.accept(normalized)
        except ClientDisconnect:
            metrics.requests.labels("client_disconnect").inc()
            return Response(status_code=400)
        except (BodyTooLarge, BodyTimeout, Overloaded) as exc:
            # The body was not read (whole): the connection cannot carry another request.
            return _outcome(metrics, _outcome_name(exc), error_response(exc, close=True))
        except (RequestRejected, Unavailable) as exc:
            if isinstance(exc, Unavailable):
                # An outage answers every request 503 (counted in the metrics); the log
                # gets one line per interval, not one per request.
                left_out = unavailable_logs.allow(type(exc).__name__)
                if left_out is not None:
                    log.warning("delivery.unavailable", extra={
                        "error": exc.message, "similar_left_out": left_out})
            return _outcome(metrics, _outcome_name(exc), error_response(exc))
        accepted.inc()
        return _accepted_response(len(normalized.events), len(normalized.quarantined))

    accepted = metrics.requests.labels("accepted")
    return _WebhookApp(path, get=verify_subscription, post=receive_delivery, metrics=metrics)


@functools.lru_cache(maxsize=256)
def _accepted_response(events: int, quarantined: int) -> Response:
    # Responses are immutable once built (Response.__call__ only reads them), so the few
    # distinct answers are built once instead of once per delivery.
    return JSONResponse({"status": "accepted", "events": events, "quarantined": quarantined})


Handler = Callable[[Request], Awaitable[Response]]


class _WebhookApp:
    """One path, two methods: the whole public surface, as a plain ASGI app.

    Starlette's router and middleware stack are not used here on purpose: the endpoint
    has one route, and their layers cost ~5% of a request's CPU.  Requests and responses
    are still Starlette's.  Anything else is answered without touching the handlers:
    another path is 404 (never a redirect, which would echo the query string and with
    it the verify token), another method 405.  An unexpected exception is a bare 500,
    logged once with its traceback, never shown."""

    def __init__(self, path: str, *, get: Handler, post: Handler, metrics: Metrics) -> None:
        self._metrics = metrics
        # Matched against the raw request target, so a percent-encoded variant of the path
        # (``/webhooks%2Fwhatsapp``) is another path: a 404.
        self._raw_path = path.encode("utf-8")
        self._handlers = {"GET": get, "POST": post}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is the listener's (sidecar.server.guard)
        response: Response
        handler = self._handlers.get(scope["method"])
        if scope["raw_path"] != self._raw_path:
            response = _outcome(self._metrics, "not_found",
                                PlainTextResponse("Not Found", status_code=404))
        elif handler is None:
            response = _outcome(self._metrics, "method_not_allowed", PlainTextResponse(
                "Method Not Allowed", status_code=405, headers={"allow": "GET, POST"}))
        else:
            try:
                response = await handler(Request(scope, receive))
            except Exception:
                log.exception("request.failed")
                response = PlainTextResponse("Internal Server Error", status_code=500)
        await response(scope, receive, send)


async def _read_body(request: Request, max_body_bytes: int, timeout_s: float,
                     hold: BodyHold) -> bytes:
    """The raw body, reading no further than the limit and for no longer than the timeout,
    paid for in ``hold`` before it is read: a declared length at once, a chunked body
    chunk by chunk (``Overloaded`` when the in-flight budget has no room).

    The body goes into one buffer (sized up front when the length is declared) rather
    than a list of chunks joined at the end: half the peak, and one large allocation,
    which the allocator maps and unmaps whole, instead of many small ones that fragment
    the heap and keep a burst's memory after it is over (server/memory.py)."""
    declared = request.headers.get("content-length")
    buffer = bytearray()
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadPayload("invalid Content-Length") from None
        if length > max_body_bytes:
            raise BodyTooLarge(f"body larger than {max_body_bytes} bytes")
        hold.take(length)
        buffer = bytearray(length)
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                end = size + len(chunk)
                if end > max_body_bytes:
                    raise BodyTooLarge(f"body larger than {max_body_bytes} bytes")
                if declared is None:
                    hold.take(len(chunk))
                    buffer += chunk
                elif end > len(buffer):  # the server frames by Content-Length; be sure
                    raise BadPayload("body longer than its Content-Length")
                else:
                    buffer[size:end] = chunk
                size = end
    except TimeoutError:
        raise BodyTimeout("request body not received in time") from None
    if declared is not None and size != len(buffer):
        raise ClientDisconnect()  # fewer bytes than declared: the client went away
    return bytes(buffer)


def _outcome_name(exc: SidecarError) -> str:
    if isinstance(exc, Overloaded):
        return "overloaded"
    return {
        401: "bad_signature", 400: "bad_payload", 408: "body_timeout",
        413: "too_large", 503: "unavailable",
    }.get(exc.http_status, "error")


def _outcome(metrics: Metrics, outcome: str, response: Response) -> Response:
    metrics.requests.labels(outcome).inc()
    if response.status_code >= 400:
        log.info("request.refused", extra={"outcome": outcome, "status": response.status_code})
    return response
