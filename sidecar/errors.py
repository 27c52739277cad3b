"""The one error tree of the sidecar.

Every error the product raises on purpose is a ``SidecarError``.  Each class carries
the HTTP status it answers with (``http_status``) and the CLI exit code it ends a
command with (``exit_code``).  Those two attributes are read in exactly two places:
``sidecar.app.responses`` and ``sidecar.cli.main``.

    SidecarError
    ├── ConfigError                 exit 2   bad/missing config key, variable or file
    ├── UsageError                  exit 2   bad command-line input
    ├── TLSMaterialError            exit 2   unreadable/invalid cert, key or CA
    ├── RequestRejected             400
    │   ├── SignatureInvalid        401
    │   ├── BadPayload              400
    │   ├── BodyTooLarge            413
    │   └── BodyTimeout             408
    ├── Unavailable                 503      Meta retries later
    │   ├── SpoolUnavailable        503
    │   ├── UpstreamUnavailable     503
    │   └── Overloaded              503      limits.max_inflight_body_bytes reached
    └── GraphError                  exit 1   Graph API said no / network error
        ├── GraphAuthError          exit 3
        ├── GraphPermissionError    exit 4
        └── GraphRateLimited        exit 5

Messages are short, safe to show to a client or operator, and never contain a secret.
"""

from __future__ import annotations

__all__ = [
    "SidecarError",
    "ConfigError",
    "UsageError",
    "TLSMaterialError",
    "RequestRejected",
    "SignatureInvalid",
    "BadPayload",
    "BodyTooLarge",
    "BodyTimeout",
    "Unavailable",
    "SpoolUnavailable",
    "UpstreamUnavailable",
    "Overloaded",
    "GraphError",
    "GraphAuthError",
    "GraphPermissionError",
    "GraphRateLimited",
]


class SidecarError(Exception):
    http_status: int = 500
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(SidecarError):
    exit_code = 2


class UsageError(SidecarError):
    exit_code = 2


class TLSMaterialError(SidecarError):
    exit_code = 2


class RequestRejected(SidecarError):
    http_status = 400


class SignatureInvalid(RequestRejected):
    http_status = 401


class BadPayload(RequestRejected):
    http_status = 400


class BodyTooLarge(RequestRejected):
    http_status = 413


class BodyTimeout(RequestRejected):
    http_status = 408


class Unavailable(SidecarError):
    http_status = 503


class SpoolUnavailable(Unavailable):
    pass


class Overloaded(Unavailable):
    """Too many request bodies in memory already: refused before this one is read."""


class UpstreamUnavailable(Unavailable):
    """The upstream refused, failed or timed out.  ``status`` is its HTTP status when it
    answered; ``retry_after_s`` is its ``Retry-After`` in seconds when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class GraphError(SidecarError):
    exit_code = 1


class GraphAuthError(GraphError):
    exit_code = 3


class GraphPermissionError(GraphError):
    exit_code = 4


class GraphRateLimited(GraphError):
    exit_code = 5
