"""The admin listener's app: its three endpoints, and nothing that echoes the client."""

from __future__ import annotations

import httpx

from sidecar.app.admin import build_admin_app
from sidecar.metrics import Metrics


async def _nothing() -> None:
    return None


async def test_a_trailing_slash_is_404_not_a_redirect_to_the_clients_host() -> None:
    app = build_admin_app(metrics=Metrics(), checks={}, refresh_gauges=_nothing)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://127.0.0.1") as client:
        assert (await client.get("/healthz")).status_code == 200
        for path in ("/healthz/", "/metrics/", "/readyz/"):
            r = await client.get(path, headers={"Host": "evil.example.com"})
            assert r.status_code == 404 and "location" not in r.headers, path
