"""The one Hypercorn internal the sidecar relies on (``sidecar.server.http11``): these
fail loudly when a Hypercorn release changes what it subclasses, before the limits it
adds silently stop applying."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import hypercorn.protocol
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import ConnectionState

from sidecar.server import http11


def test_the_pinned_hypercorn_is_installed() -> None:
    assert version("hypercorn").startswith("0.18."), version("hypercorn")


def test_the_overridden_methods_have_the_shape_they_were_written_for() -> None:
    for name, params in http11.OVERRIDDEN.items():
        method = getattr(H11Protocol, name)
        assert inspect.iscoroutinefunction(method), name
        assert list(inspect.signature(method).parameters) == params, name
    # What the subclass reads from the instance Hypercorn built.
    source = inspect.getsource(H11Protocol.__init__)
    for attribute in ("self.stream", "self.connection", "self.task_group", "self.send",
                      "self.config"):
        assert attribute in source, attribute
    # The switches it turns off are made in _check_protocol and nowhere else.
    handle_events = inspect.getsource(H11Protocol._handle_events)
    assert "await self._check_protocol(event)" in handle_events
    assert "await self._create_stream(event)" in handle_events


def test_hypercorn_builds_the_guarded_protocol_for_http11_connections() -> None:
    import asyncio

    http11.install()
    http11.install()  # idempotent
    assert hypercorn.protocol.H11Protocol is http11.GuardedH11Protocol  # type: ignore[attr-defined]

    async def build() -> object:
        async def send(event: object) -> None:
            return None

        wrapper = hypercorn.protocol.ProtocolWrapper(
            None, Config(), WorkerContext(None), TaskGroup(asyncio.get_running_loop()),  # type: ignore[arg-type]
            ConnectionState({}), False, None, None, send, "http/1.1")
        return wrapper.protocol

    assert isinstance(asyncio.run(build()), http11.GuardedH11Protocol)
