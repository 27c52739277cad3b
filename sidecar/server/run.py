"""``sidecar serve``: open and own the spool, bind the sockets, run one process or the
``--workers N`` supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from sidecar.config import Config, load_config
from sidecar.errors import SidecarError
from sidecar.metrics import Metrics
from sidecar.server.compose import compose
from sidecar.server.process import (
    freeze_startup_objects,
    quiet_tls_errors,
    run_loop,
    stop_and_reload_events,
)
from sidecar.server.supervisor import Supervisor, admin_socket, log_start, public_socket
from sidecar.spool import Spool, open_spool

__all__ = ["run_server"]

log = logging.getLogger("sidecar.server")


def run_server(config_path: Path, *, loop: str = "auto", workers: int = 1) -> int:
    config = load_config(config_path)
    # Before any loop or log line: a SQLite spool another process delivers from is a
    # one-line refusal (the worker requeues every in-flight claim at start; two would
    # collide); a shared PostgreSQL spool is reached, migrated and checked, never refused.
    spool = open_spool(config.delivery)
    try:
        spool.take_ownership()
    except SidecarError:
        spool.close()
        raise
    if workers <= 1:
        try:
            with contextlib.ExitStack() as sockets:  # closed however the run ends
                public_sock = sockets.enter_context(public_socket(config, reuse_port=False))
                admin_sock = sockets.enter_context(admin_socket(config))
                run_loop(lambda: _serve_single(config, spool, public_sock, admin_sock), loop)
        finally:
            spool.close()  # idempotent; _serve_single closes it when it ran
        return 0
    try:
        supervisor = Supervisor(config, spool, workers, loop)
    except BaseException:
        spool.close()
        raise
    run_loop(supervisor.run, loop)
    return 0


async def _serve_single(config: Config, spool: Spool, public_sock: socket.socket,
                        admin_sock: socket.socket) -> None:
    """Both roles in one process and one event loop."""
    try:
        parts = compose(config, spool=spool, metrics=Metrics(), ingest=True, delivery=True,
                        max_connections=config.limits.max_connections)
        assert parts.ingest is not None and parts.delivery is not None
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet_tls_errors)
        stop, reload_now = stop_and_reload_events(loop)
        delivery_stop = asyncio.Event()
        log_start(config, workers=1)
        reloader = asyncio.create_task(parts.live.reloader(stop, reload_now))
        delivery_task = asyncio.create_task(parts.delivery.serve(delivery_stop, admin_sock))
        freeze_startup_objects()
        try:
            await parts.ingest.serve(stop, public_sock)
        finally:
            reloader.cancel()
            delivery_stop.set()
            await delivery_task
    finally:
        spool.close()
        log.info("server.stopped")
