"""The seam under ``UpstreamClient``: how a signed body reaches the upstream.

``UpstreamTransport.post`` sends one body and gives back the status and headers, or
raises ``UpstreamUnavailable`` for anything that is not an HTTP answer.  The real one is
the keep-alive pool (``sidecar.delivery.http1``); ``MockTransport`` (httpx's idea) hands
each request to a function instead, for tests and for trying a backend's answers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.events import JSONValue

__all__ = ["UpstreamRequest", "UpstreamResponse", "UpstreamTransport", "MockTransport"]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    body: bytes
    headers: Mapping[str, str]  # lower-case names

    def json(self) -> JSONValue:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]  # lower-case names


class UpstreamTransport(Protocol):
    async def post(self, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


Handler = Callable[[UpstreamRequest], "UpstreamResponse | Awaitable[UpstreamResponse]"]


class MockTransport:
    """``MockTransport(lambda request: UpstreamResponse(204, {}))``: every POST is handed
    to ``handler`` (a function or a coroutine function); what it raises is raised."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def post(self, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        answer = self._handler(UpstreamRequest(body, {k.lower(): v for k, v in headers.items()}))
        if inspect.isawaitable(answer):
            answer = await answer
        assert isinstance(answer, UpstreamResponse)
        return answer

    async def aclose(self) -> None:
        pass
