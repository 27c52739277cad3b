"""The public ASGI app's own answers: routing, lifespan (behind the listener's guard),
and the last-resort 500."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from sidecar.app.public import RequestSettings, build_public_app
from sidecar.checks.signature import SignatureVerifier, sign
from sidecar.metrics import Metrics
from sidecar.secret import Secret
from sidecar.server.guard import RequestGuard

SECRET = Secret("s3cret-value")


class ExplodingIngest:
    async def accept(self, normalized: object) -> None:
        raise RuntimeError("boom: internal detail with s3cret-value")


def _app():
    settings = RequestSettings(SignatureVerifier([SECRET]), Secret("tok"), "forward")
    return build_public_app(path="/hook", settings=lambda: settings, ingest=ExplodingIngest(),
                            metrics=Metrics(), max_body_bytes=1024, body_timeout_s=5)


async def _request(method: str, url: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="https://sidecar.test") as c:
        return await c.request(method, url, **kw)  # type: ignore[arg-type]


def test_unexpected_error_is_a_bare_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    body = (b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":'
            b'[{"field":"x","value":{}}]}]}')
    with caplog.at_level(logging.ERROR, logger="sidecar.request"):
        r = asyncio.run(_request("POST", "/hook", content=body,
                                 headers={"x-hub-signature-256": sign(SECRET, body)}))
    assert r.status_code == 500 and r.text == "Internal Server Error"
    assert [rec.getMessage() for rec in caplog.records] == ["request.failed"]


@pytest.mark.parametrize("method, url, status", [
    ("GET", "/other", 404), ("POST", "/hook/", 404), ("PUT", "/hook", 405),
    ("HEAD", "/hook", 405), ("DELETE", "/hook?hub.verify_token=tok", 405),
    ("POST", "/%68ook", 404), ("GET", "/hook%2F", 404),  # the raw target, not its decoding
])
def test_other_paths_and_methods(method: str, url: str, status: int) -> None:
    r = asyncio.run(_request(method, url))
    assert r.status_code == status
    assert "location" not in r.headers and "tok" not in r.text
    if status == 405:
        assert r.headers["allow"] == "GET, POST"


def test_lifespan_is_acknowledged() -> None:
    # As served: every listener's app runs inside the RequestGuard, which answers lifespan.
    app = RequestGuard(_app(), stopping=asyncio.Event(), max_header_bytes=16384,
                       send_timeout_s=1.0)
    sent: list[dict[str, str]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, str]:
        return next(messages)

    async def send(message: dict[str, str]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]
