"""The one place a ``SidecarError`` becomes an HTTP response.

The body is a short JSON object with the error's message — messages are written to be
safe to show: no stack trace, no secret, nothing from the upstream's response.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from sidecar.errors import SidecarError

__all__ = ["error_response"]


def error_response(exc: SidecarError, *, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else None
    return JSONResponse({"error": exc.message}, status_code=exc.http_status, headers=headers)
