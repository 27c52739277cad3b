"""``sidecar serve``: open and own the spool, bind the sockets, run one process or the
``--workers N`` supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from sidecar.config import Config, load_config
from sidecar.metrics import Metrics
from sidecar.server import memory
from sidecar.server.compose import compose
from sidecar.server.fds import check_fd_budget, raise_nofile_limit
from sidecar.server.instance import claim_listen_address
from sidecar.server.process import run_loop, serve_until_stopped
from sidecar.server.supervisor import (
    Supervisor,
    admin_socket,
    inflight_share,
    log_start,
    public_socket,
)
from sidecar.spool import Spool, open_spool

__all__ = ["run_server"]

log = logging.getLogger("sidecar.server")


def run_server(config_path: Path, *, loop: str = "auto", workers: int = 1) -> int:
    config = load_config(config_path)
    inflight_share(config, max(1, workers))  # a one-line refusal before anything starts
    memory.tune_malloc()
    # The public listener must never run the process out of file descriptors (fds.py).
    check_fd_budget(config, limit=raise_nofile_limit())
    # Before any loop or log line: a SQLite spool another process delivers from is a
    # one-line refusal (the worker requeues every in-flight claim at start; two would
    # collide); a shared PostgreSQL spool is reached, migrated and checked, never refused.
    spool = open_spool(config.delivery)
    try:
        spool.take_ownership()
        # One instance per listen address, whatever the worker count (see instance.py);
        # the lock is held until this process exits.
        instance_lock = claim_listen_address(config.listen.host, config.listen.port)
    except BaseException:
        spool.close()
        raise
    try:
        return _run(config, spool, loop=loop, workers=workers)
    finally:
        if instance_lock is not None:
            instance_lock.close()


def _run(config: Config, spool: Spool, *, loop: str, workers: int) -> int:
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
        ingest, delivery = parts.ingest, parts.delivery
        assert ingest is not None and delivery is not None
        delivery_stop = asyncio.Event()  # set once the ingest side has drained
        delivery_task = asyncio.create_task(delivery.serve(delivery_stop, admin_sock))

        async def ingest_then_delivery(stop: asyncio.Event) -> None:
            try:
                await ingest.serve(stop, public_sock)
            finally:
                delivery_stop.set()
                await delivery_task

        log_start(config, workers=1)
        await serve_until_stopped(parts.live, ingest_then_delivery)
    finally:
        spool.close()
        log.info("server.stopped")
