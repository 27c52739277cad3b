"""The one Hypercorn internal the sidecar relies on (``sidecar.server.http11``): these
fail loudly when a Hypercorn release changes what it subclasses, before the limits it
adds silently stop applying."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import hypercorn.protocol
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer
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
                      "self.config", "self.ssl"):
        assert attribute in source, attribute
    # The switches it turns off are made in _check_protocol and nowhere else.
    handle_events = inspect.getsource(H11Protocol._handle_events)
    assert "await self._check_protocol(event)" in handle_events
    assert "await self._create_stream(event)" in handle_events
    # A request refused in _create_stream leaves no stream: the loop must stop there.
    assert "elif self.stream is None:\n                    break" in handle_events
    # The refusal is Hypercorn's own error answer, and the TLS object is the writer's,
    # behind the bound protocol_send that TCPServer hands the protocol as ``send``.
    assert list(inspect.signature(H11Protocol._send_error_response).parameters) == [
        "self", "status_code"]
    run = inspect.getsource(TCPServer.run)
    assert "self.protocol_send" in run and 'self.writer.get_extra_info("ssl_object")' in run
    # The idle timer's hand-over: Hypercorn starts its idle task after ``initiate``, an
    # ``Updated(idle=False)`` stops it, and the protocol sends ``Updated`` from these two
    # methods only (the subclass takes them over after the first).
    assert run.index("await self.protocol.initiate()") < run.index(
        "await self.idle_task.restart(task_group, self._idle_timeout)")
    protocol_send = inspect.getsource(TCPServer.protocol_send)
    assert "if event.idle:" in protocol_send and "await self.idle_task.stop()" in protocol_send
    module = inspect.getsource(inspect.getmodule(H11Protocol))  # type: ignore[arg-type]
    assert module.count("Updated(") == 2
    assert "await self.send(Updated(idle=False))" in handle_events
    assert "await self.send(Updated(idle=True))" in inspect.getsource(H11Protocol._maybe_recycle)


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


def test_a_response_goes_out_in_one_write() -> None:
    """Hypercorn writes a response's head, body and (empty) end separately: three writes,
    two TLS records.  The guarded protocol holds the head for the body."""
    import asyncio

    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.events import Closed, RawData

    http11.install()

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})  # type: ignore[operator]

    async def scenario() -> list[bytes]:
        sent: list[object] = []

        async def send(event: object) -> None:
            sent.append(event)

        loop = asyncio.get_running_loop()
        async with TaskGroup(loop) as task_group:
            wrapper = hypercorn.protocol.ProtocolWrapper(
                ASGIWrapper(app), Config(), WorkerContext(None), task_group,  # type: ignore[arg-type]
                ConnectionState({}), False, None, None, send, "http/1.1")
            await wrapper.initiate()
            await wrapper.handle(RawData(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
            for _ in range(50):
                if sent:
                    break
                await asyncio.sleep(0.01)
            await wrapper.handle(Closed())
        return [e.data for e in sent if isinstance(e, RawData)]

    writes = asyncio.run(scenario())
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n\r\nhello")
