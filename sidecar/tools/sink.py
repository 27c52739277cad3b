"""A small upstream that records (and optionally prints) what the sidecar delivers.

Used by ``sidecar demo`` as the stand-in backend, and by the tests as a real HTTP
upstream.  It checks the Standard Webhooks signature when it knows the secret, and its
answer can be changed at run time (``status``, ``delay_s``) to play an unhealthy backend.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.delivery.signing import Signer
from sidecar.secret import Secret

__all__ = ["RecordingSink", "ReceivedRequest"]


class ReceivedRequest:
    __slots__ = ("path", "headers", "body", "signature_ok", "answered")

    def __init__(self, path: str, headers: dict[str, str], body: bytes,
                 signature_ok: bool | None, answered: int) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.signature_ok = signature_ok
        self.answered = answered

    def events(self) -> list[dict[str, Any]]:
        doc = json.loads(self.body)
        return doc if isinstance(doc, list) else [doc]


class RecordingSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 signing_secret: Secret | None = None,
                 on_request: Callable[[ReceivedRequest], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: serve HTTPS with it (a server context), else plain HTTP."""
        self._signer = Signer(signing_secret) if signing_secret is not None else None
        self._on_request = on_request
        self._lock = threading.Lock()
        self.requests: list[ReceivedRequest] = []
        self.status = 200
        self.delay_s = 0.0
        self.arrived = 0  # requests read, answered or not yet (``delay_s``)
        self._changed = threading.Condition(self._lock)
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._scheme = "http"
        if ssl_context is not None:
            # The handshake runs in the handler's thread, so a stuck client holds only it.
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False)
            self._scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="recording-sink")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}/events"

    def start(self) -> RecordingSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        """Every event of every request answered 2xx, in arrival order."""
        with self._lock:
            accepted = [r for r in self.requests if 200 <= r.answered < 300]
        return [event for r in accepted for event in r.events()]

    def wait_for(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until ``count`` events were accepted (or the timeout); return them."""
        with self._changed:
            self._changed.wait_for(
                lambda: sum(len(r.events()) for r in self.requests
                            if 200 <= r.answered < 300) >= count, timeout=timeout_s)
        return self.delivered()

    def _record(self, request: ReceivedRequest) -> None:
        if self._on_request is not None:
            self._on_request(request)  # first: whoever waits for this request sees its effect
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def _check_signature(self, headers: dict[str, str], body: bytes) -> bool | None:
        if self._signer is None:
            return None
        try:
            expected = self._signer.headers(headers["webhook-id"],
                                            int(headers["webhook-timestamp"]), body)
        except (KeyError, ValueError):
            return False
        return expected["webhook-signature"] == headers.get("webhook-signature")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with sink._lock:
                    sink.arrived += 1
                headers = {k.lower(): v for k, v in self.headers.items()}
                if sink.delay_s:
                    threading.Event().wait(sink.delay_s)
                status = sink.status
                sink._record(ReceivedRequest(self.path, headers, body,
                                             sink._check_signature(headers, body), status))
                payload = b'{"ok":true}' if 200 <= status < 300 else b'{"error":"sink says no"}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
