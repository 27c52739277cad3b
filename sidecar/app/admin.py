"""The admin listener (plain HTTP, loopback by default): liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar.metrics import Metrics

__all__ = ["build_admin_app", "ReadinessCheck"]

# Each check returns None when fine, or a short reason.
ReadinessCheck = Callable[[], Awaitable[str | None]]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CHECK_TIMEOUT_S = 2.0  # a check that hangs (a spool stuck behind a lock) is a failure


def build_admin_app(
    *,
    metrics: Metrics,
    checks: Mapping[str, ReadinessCheck],
    refresh_gauges: Callable[[], Awaitable[None]],
) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        names = list(checks)
        results = await asyncio.gather(
            *(asyncio.wait_for(checks[n](), CHECK_TIMEOUT_S) for n in names),
            return_exceptions=True)
        failures = {}
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                failures[name] = type(result).__name__
            elif result is not None:
                failures[name] = result
        if failures:
            return JSONResponse({"status": "not ready", "failing": failures}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        await refresh_gauges()
        return Response(metrics.render(), media_type=PROMETHEUS_TEXT)

    app = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ])
    # ``/metrics/`` is a 404, not a redirect built from the client's Host header.
    app.router.redirect_slashes = False
    return app
