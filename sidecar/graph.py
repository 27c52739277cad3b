"""Graph API client for ``/{WABA_ID}/subscribed_apps`` (list, subscribe, unsubscribe).

Every failure becomes a ``GraphError`` subclass with one short line of text:

    GraphError             exit 1  other Graph error codes, HTTP 5xx, bad bodies, network
    ├── GraphAuthError     exit 3  code 190 (OAuthException: bad or expired token)
    ├── GraphPermissionError exit 4 code 10 or 200-299
    └── GraphRateLimited   exit 5  codes 4, 17, 32, 613, 80008 or HTTP 429, still throttled
                                   after the bounded retries

Throttled calls are retried: the wait is the largest ``estimated_time_to_regain_access``
(minutes) in ``X-Business-Use-Case-Usage``, else ``Retry-After``, else 2, 4, 8 … s.  At
most ``max_retries`` retries and ``max_wait_s`` seconds of waiting in all; when Meta asks
for more than what is left of that budget, the call fails at once and says so.

The access token is sent only in the ``Authorization`` header and never appears in an
exception message, a ``repr`` or a log line.  Response bodies are never quoted whole.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sidecar.delivery.retry import parse_retry_after
from sidecar.errors import (
    GraphAuthError,
    GraphError,
    GraphPermissionError,
    GraphRateLimited,
    UsageError,
)
from sidecar.secret import Secret

__all__ = [
    "GraphClient",
    "SubscribedApp",
    "THROTTLE_CODES",
    "validate_waba_id",
    "parse_buc_wait_s",
]

JSONValue = Any

THROTTLE_CODES = frozenset({4, 17, 32, 613, 80008})
AUTH_CODES = frozenset({190})
_MAX_BODY_BYTES = 1024 * 1024
_MAX_MESSAGE_CHARS = 200
_MASK_ANYWHERE_CHARS = 16  # Graph access tokens are ~200 characters
_WABA_ID = re.compile(r"[0-9]{1,32}")
_API_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: safe in a header, never echoed


@dataclass(frozen=True, slots=True)
class SubscribedApp:
    app_id: str
    name: str
    link: str
    override_callback_uri: str | None = None


def validate_waba_id(waba_id: str) -> str:
    """Return ``waba_id`` if it is all digits (so it cannot change the request path)."""
    if not _WABA_ID.fullmatch(waba_id):
        raise UsageError("WABA id must be digits only (the WhatsApp Business Account id)")
    return waba_id


def parse_buc_wait_s(value: str | None) -> float | None:
    """Seconds to wait from ``X-Business-Use-Case-Usage``: the largest
    ``estimated_time_to_regain_access`` (minutes) over every id and entry, or None."""
    if not value:
        return None
    try:
        usage = json.loads(value)
    except ValueError:
        return None
    if not isinstance(usage, dict):
        return None
    minutes = [
        entry["estimated_time_to_regain_access"]
        for entries in usage.values()
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict) and _is_number(entry.get("estimated_time_to_regain_access"))
    ]
    return max(minutes) * 60.0 if minutes else None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _format_s(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} min ({seconds:g} s)"
    return f"{seconds:g} s"


class _Throttled(Exception):
    """Internal: one throttled answer, with the line to show and Meta's advertised wait."""

    def __init__(self, message: str, reason: str, advertised_s: float | None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.advertised_s = advertised_s


class GraphClient:
    """Calls ``{base_url}/{api_version}/{waba_id}/subscribed_apps`` with a bearer token."""

    def __init__(
        self,
        base_url: str,
        api_version: str,
        token: Secret,
        *,
        timeout_s: float = 10,
        max_retries: int = 3,
        max_wait_s: float = 60,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self._base = httpx.URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise UsageError("Graph URL must be an http:// or https:// URL with a host")
        if not _API_VERSION.fullmatch(api_version):
            raise UsageError("Graph API version must look like v24.0")
        if not _TOKEN.fullmatch(token.reveal()):
            raise UsageError("Graph access token is empty or has characters not allowed "
                             "in an HTTP header")
        if max_retries < 0 or max_wait_s < 0 or timeout_s <= 0:
            raise UsageError("max_retries and max_wait_s must be >= 0 and timeout_s > 0")
        self.api_version = api_version
        self.max_retries = max_retries
        self.max_wait_s = float(max_wait_s)
        self._timeout_s = float(timeout_s)
        self._token = token
        self._sleep = sleep
        self._on_wait = on_wait
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"GraphClient({str(self._base)!r}, {self.api_version!r}, token=***)"

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ public calls

    def list_subscribed_apps(self, waba_id: str) -> list[SubscribedApp]:
        body = self._call("GET", waba_id)
        return _parse_apps(body)

    def subscribe(
        self,
        waba_id: str,
        *,
        override_callback_uri: str | None = None,
        verify_token: Secret | None = None,
    ) -> None:
        payload: dict[str, str] | None = None
        if override_callback_uri is not None or verify_token is not None:
            if override_callback_uri is None or verify_token is None:
                raise UsageError("override_callback_uri and verify_token go together")
            payload = {
                "override_callback_uri": override_callback_uri,
                "verify_token": verify_token.reveal(),
            }
        _require_success(self._call("POST", waba_id, payload), "POST")

    def unsubscribe(self, waba_id: str) -> None:
        _require_success(self._call("DELETE", waba_id), "DELETE")

    # ------------------------------------------------------------------ retry loop

    def _call(self, method: str, waba_id: str, payload: dict[str, str] | None = None) -> JSONValue:
        url = self._url(validate_waba_id(waba_id))
        waited = 0.0
        retries = 0
        while True:
            try:
                return self._once(method, url, payload)
            except _Throttled as throttled:
                reason = throttled.reason
                wait_s = self._next_wait(throttled, retries, waited)
            retries += 1
            if self._on_wait is not None:
                self._on_wait(f"rate limited by Graph ({reason}); retrying in "
                              f"{_format_s(wait_s)} ({retries}/{self.max_retries})")
            self._sleep(wait_s)
            waited += wait_s

    def _next_wait(self, throttled: _Throttled, retries: int, waited: float) -> float:
        """The wait before the next retry, or raise ``GraphRateLimited`` if none is left."""
        if retries >= self.max_retries:
            raise GraphRateLimited(f"{throttled.message}; still rate limited after "
                                   f"{retries} retries")
        remaining = self.max_wait_s - waited
        if throttled.advertised_s is not None:
            if throttled.advertised_s > remaining:
                raise GraphRateLimited(
                    f"{throttled.message}; Meta asks to wait {_format_s(throttled.advertised_s)}, "
                    f"more than the {_format_s(remaining)} left of the retry budget; "
                    "try again later")
            return throttled.advertised_s
        backoff = 2.0 ** (retries + 1)
        if backoff > remaining:
            raise GraphRateLimited(f"{throttled.message}; still rate limited after "
                                   f"{_format_s(waited)} of retries")
        return backoff

    # ------------------------------------------------------------------ one request

    def _url(self, waba_id: str) -> httpx.URL:
        path = f"{self._base.path.rstrip('/')}/{self.api_version}/{waba_id}/subscribed_apps"
        return self._base.copy_with(path=path)

    def _once(self, method: str, url: httpx.URL, payload: dict[str, str] | None) -> JSONValue:
        headers = {
            "Authorization": f"Bearer {self._token.reveal()}",
            "Accept": "application/json",
        }
        deadline = time.monotonic() + self._timeout_s
        try:
            with self._client.stream(method, url, headers=headers, json=payload) as response:
                raw = _read_capped(response, deadline)
        except _TooSlow:
            raise GraphError(f"Graph API at {self._base.host} did not finish answering within "
                             f"{_format_s(self._timeout_s)}") from None
        except httpx.TimeoutException as exc:
            raise GraphError(f"Graph API at {self._base.host} did not answer within "
                             f"{_format_s(self._timeout_s)} ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            host = self._base.host
            raise GraphError(f"cannot reach Graph API at {host}: {type(exc).__name__}") from None
        return self._decode(response, raw)

    def _decode(self, response: httpx.Response, raw: bytes) -> JSONValue:
        status = response.status_code
        body = _json_or_none(raw)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            self._raise_graph_error(error, response)
        if status == 429:
            raise _Throttled(f"Graph API rate limited the call (HTTP {status})", f"HTTP {status}",
                             _advertised_wait_s(response))
        if not 200 <= status < 300:
            raise GraphError(f"Graph API answered HTTP {status}" + (
                "" if status >= 500 else " without a Graph error object"))
        if body is None:
            raise GraphError(f"Graph API answered HTTP {status} with a body that is not JSON")
        return body

    def _raise_graph_error(self, error: dict[str, Any], response: httpx.Response) -> None:
        code = error.get("code")
        message = _graph_error_line(error, response.status_code, self._token)
        if isinstance(code, bool) or not isinstance(code, int):
            raise GraphError(message)
        if code in AUTH_CODES:
            raise GraphAuthError(message)
        if code == 10 or 200 <= code <= 299:
            raise GraphPermissionError(message)
        if code in THROTTLE_CODES or response.status_code == 429:
            raise _Throttled(message, f"code {code}", _advertised_wait_s(response))
        raise GraphError(message)


# ---------------------------------------------------------------------- helpers


class _TooSlow(Exception):
    """The answer's body was still arriving at the request's deadline."""


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    """The body, at most ``_MAX_BODY_BYTES``, complete by ``deadline`` (httpx's timeout is
    per read: a server sending a byte a second would otherwise hold the command)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise _TooSlow
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise GraphError(f"Graph API answered HTTP {response.status_code} with a body "
                             f"larger than {_MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(raw: bytes) -> JSONValue | None:
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None


def _advertised_wait_s(response: httpx.Response) -> float | None:
    buc = parse_buc_wait_s(response.headers.get("x-business-use-case-usage"))
    if buc is not None:
        return buc
    return parse_retry_after(response.headers.get("retry-after"), time.time())


def _clean(value: object, token: Secret, limit: int = _MAX_MESSAGE_CHARS) -> str:
    """One line, at most ``limit`` characters, with the token (if echoed) masked."""
    text = _mask(" ".join(str(value).split()), token.reveal())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mask(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced by ``***``.  A real access token is long and
    masked wherever it appears; a short one (a test token such as ``tok``) only where it
    stands alone, so that Graph's own words ("token") are not mangled into "***en"."""
    if not secret:
        return text
    if len(secret) >= _MASK_ANYWHERE_CHARS:
        return text.replace(secret, "***")
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)


def _graph_error_line(error: dict[str, Any], status: int, token: Secret) -> str:
    code = error.get("code")
    subcode = error.get("error_subcode")
    ident = _clean(code, token, 20) if code is not None else f"(no code, HTTP {status})"
    if subcode is not None:
        ident += f"/{_clean(subcode, token, 20)}"
    kind = f" ({_clean(error['type'], token, 40)})" if error.get("type") else ""
    message = _clean(error.get("message") or "no message", token)
    trace = f" [fbtrace_id {_clean(error['fbtrace_id'], token, 40)}]" if error.get(
        "fbtrace_id") else ""
    return f"Graph API error {ident}{kind}: {message}{trace}"


def _require_success(body: JSONValue, method: str) -> None:
    success = body.get("success") if isinstance(body, dict) else None
    if success is True or success == "true":
        return
    raise GraphError(f"Graph API did not confirm the {method} subscribed_apps call "
                     "(expected {\"success\": true})")


def _parse_apps(body: JSONValue) -> list[SubscribedApp]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise GraphError("unexpected Graph API answer to GET subscribed_apps: no 'data' list")
    return [_parse_app(item) for item in data]


def _parse_app(item: JSONValue) -> SubscribedApp:
    info = item.get("whatsapp_business_api_data") if isinstance(item, dict) else None
    app_id = info.get("id") if isinstance(info, dict) else None
    if isinstance(app_id, bool) or not isinstance(app_id, (str, int)) or app_id == "":
        raise GraphError("unexpected Graph API answer to GET subscribed_apps: "
                         "an entry without whatsapp_business_api_data.id")
    assert isinstance(info, dict) and isinstance(item, dict)
    override = item.get("override_callback_uri")
    return SubscribedApp(
        app_id=str(app_id),
        name=_text(info.get("name")),
        link=_text(info.get("link")),
        override_callback_uri=override if isinstance(override, str) and override else None,
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
