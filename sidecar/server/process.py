"""What every serving process does the same way: pick its event loop, turn signals into
events, keep refused handshakes out of the error log, and freeze its start-up objects.

Signals only set events (huey): SIGTERM/SIGINT → graceful stop (stop accepting, finish
in-flight requests, leave the spool clean); SIGHUP → reload now.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from sidecar.logs import Throttle
from sidecar.server.reload import LiveState

__all__ = [
    "run_loop",
    "serve_until_stopped",
    "stop_and_reload_events",
    "quiet_tls_errors",
    "freeze_startup_objects",
    "default_workers",
]

log = logging.getLogger("sidecar.server")


def run_loop(main: Callable[[], Awaitable[None]], loop_name: str) -> None:
    """Run ``main`` on uvloop (``auto``: when installed) or asyncio's own loop."""
    if loop_name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop_name == "uvloop":
                raise
        else:
            uvloop.run(main())  # type: ignore[arg-type]
            return
    asyncio.run(main())  # type: ignore[arg-type]


async def serve_until_stopped(
        live: LiveState, main: Callable[[asyncio.Event], Awaitable[None]], *,
        alongside: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
        on_ready: Callable[[], None] = lambda: None) -> None:
    """A serving process's frame: refused handshakes kept out of the error log, signals
    turned into events, the reloader and the ``alongside`` tasks running, start-up
    objects frozen; ``main(stop)`` runs until it returns, then the side tasks end.
    ``on_ready`` runs once the signal handlers are in place."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_tls_errors)
    stop, reload_now = stop_and_reload_events(loop)
    on_ready()
    tasks = [asyncio.create_task(live.reloader(stop, reload_now)),
             *(asyncio.create_task(side(stop)) for side in alongside)]
    freeze_startup_objects()
    try:
        await main(stop)
    finally:
        for task in tasks:
            task.cancel()


def stop_and_reload_events(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Event,
                                                                       asyncio.Event]:
    stop, reload_now = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    return stop, reload_now


# Accept errors (out of file descriptors or memory) repeat for as long as the cause
# lasts, once per listener per retry: one line per 10 s says so, with how many were left
# out.  One throttle per process, like the process's log handlers.
_ACCEPT_ERRORS = Throttle(10.0)


def quiet_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler (Hypercorn's ``_exception_handler``, and more):
    refused handshakes are expected traffic, counted by the TLS holder, so they leave no
    traceback; accept errors are logged, throttled; a connection cancelled at the end of
    a graceful stop is not an error."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
        skipped = _ACCEPT_ERRORS.allow("accept")
        if skipped is not None:
            log.warning("listener.accept_failed", extra={
                "error": exc.strerror or type(exc).__name__, "left_out": skipped})
        return
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        log.debug("tls.handshake_failed", extra={"error": type(exc).__name__})
        return
    if isinstance(exc, asyncio.CancelledError):
        log.debug("connection.cancelled")
        return
    loop.default_exception_handler(context)


def freeze_startup_objects() -> None:
    """Take what start-up built (modules, config, TLS state, metrics) out of the cyclic
    collector's reach, so a full collection scans only what requests allocate since.

    Full (generation 2) collections otherwise stop a serving process for tens of
    milliseconds under load (bench/RESULTS.md).  Objects made later, such as each
    connection's transport/protocol cycle that frees its connection slot, are collected
    as before; start-up objects that become cyclic garbage after a reload are kept (a
    few kilobytes, once)."""
    gc.collect()  # not freeze start-up's own garbage
    gc.freeze()


def default_workers(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """One ingest process per CPU this process may use: its affinity mask, capped by a
    cgroup v2 CPU quota (a container limited to 1.5 CPUs gets 2, to 1 CPU gets 1)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
