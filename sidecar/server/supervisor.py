"""``serve --workers N``: the parent keeps the public port, the delivery role and N
spawned ingest processes.

Each ingest process listens on the public port with ``SO_REUSEPORT``, so the kernel
spreads new connections across them (one shared socket would not: one process's accept
loop takes a whole burst of connections, and keep-alive keeps them there).  Python is
one core per process, and TLS handshakes, HTTP parsing and checks are the CPU-heavy
part.  Ingest processes share the spool (event ids are primary keys, so dedup holds
across processes) and wake the parent's delivery worker with a datagram after each
commit.  Metrics use Prometheus's multiprocess mode, so the parent's ``/metrics`` shows
every process.  SIGHUP to the parent is forwarded to every ingest process that is ready;
one that dies is replaced, with a growing delay while replacements keep failing.

Every process that serves uses the last good configuration.  A replacement gets the
parent's current one (its reloadable sections, ``tls`` and ``meta``), never the start-up
file's: after onboarding switched ``client_auth`` to ``required``, or a secret, name or CA
was removed, a killed process must not come back admitting what the reload refused.  A
reload that completes while a replacement is starting (it was handed the config before)
is caught up by a SIGHUP as soon as that process says it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sidecar.clock import wait_for_event
from sidecar.config import Config
from sidecar.errors import ConfigError, SidecarError
from sidecar.logs import setup_logging
from sidecar.metrics import Metrics
from sidecar.server import memory
from sidecar.server.compose import compose
from sidecar.server.listen import bind_socket
from sidecar.server.process import (
    freeze_startup_objects,
    quiet_tls_errors,
    run_loop,
    serve_until_stopped,
    stop_and_reload_events,
)
from sidecar.server.roles import DeliveryRole
from sidecar.spool import Spool, open_spool

__all__ = ["Supervisor", "log_start", "public_socket", "admin_socket", "inflight_share"]

log = logging.getLogger("sidecar.server")

_CHILD_RESTART_DELAY_S = 1.0
_WAKE = b"!"
_READY = b"ready:"


def public_socket(config: Config, *, reuse_port: bool) -> socket.socket:
    """The parent binds one and never listens on it: to fail early (one line) when the
    port is taken, and to hold it for the ingest processes (a bound, non-listening
    socket gets no connections)."""
    return bind_socket(config.listen.host, config.listen.port, reuse_port=reuse_port)


def admin_socket(config: Config) -> socket.socket:
    return bind_socket(config.admin.host, config.admin.port)


def inflight_share(config: Config, workers: int) -> int:
    """One ingest process's share of ``limits.max_inflight_body_bytes``; ``ConfigError``
    when a body of ``max_body_bytes`` would never fit in a share."""
    limits = config.limits
    share = limits.max_inflight_body_bytes // workers
    if share < limits.max_body_bytes:
        raise ConfigError(
            f"config key 'limits.max_inflight_body_bytes': {limits.max_inflight_body_bytes} "
            f"split across {workers} ingest processes leaves less than "
            f"limits.max_body_bytes ({limits.max_body_bytes}) each; raise it or use fewer "
            "--workers")
    return share


def log_start(config: Config, *, workers: int) -> None:
    log.info("server.starting", extra={
        "listen": _bind(config.listen.host, config.listen.port),
        "admin": _bind(config.admin.host, config.admin.port), "path": config.listen.path,
        "mode": config.delivery.mode, "client_auth": config.tls.client_auth,
        "workers": workers})


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ParentWake:
    """Ingest processes ping the parent's delivery worker through a datagram socket
    (and say once that they are ready, so SIGHUP is only forwarded to processes that
    handle it)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = False
        sock.setblocking(False)

    def __call__(self) -> None:
        # One ping per turn of the event loop, however many commits it saw.
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._ping)

    def _ping(self) -> None:
        self._pending = False
        self._send(_WAKE)

    def ready(self) -> None:
        self._send(_READY + str(os.getpid()).encode())

    def _send(self, message: bytes) -> None:
        try:
            self._sock.send(message)
        except (BlockingIOError, OSError):
            pass  # the worker also polls; a lost ping only delays delivery a little


def _ingest_process_main(config: Config, wake_sock: socket.socket, loop_name: str,
                         metrics_dir: str, max_connections: int,
                         inflight_body_bytes: int) -> None:
    """Entry point of one spawned ingest process.

    It gets the parent's validated config (not the file): the start-up one for what needs
    a restart (a replacement must not pick up a spool path or port the parent is not
    using), the last good reload for ``tls`` and ``meta``; its own reloads then re-read
    the TLS and secret settings from the file like every process's do."""
    setup_logging(config.logging.level, config.logging.format,
                  proc=multiprocessing.current_process().name.removeprefix("sidecar-"))
    memory.tune_malloc()
    try:
        sock = public_socket(config, reuse_port=True)
    except OSError as exc:
        log.error("ingest.failed", extra={"error": f"cannot listen: {exc.strerror or exc}"})
        raise SystemExit(1) from None

    async def main() -> None:
        spool = open_spool(config.delivery)
        try:
            parent = _ParentWake(wake_sock)
            parts = compose(config, spool=spool,
                            metrics=Metrics(multiprocess_dir=Path(metrics_dir)),
                            ingest=True, delivery=False, wake=parent,
                            max_connections=max_connections,
                            inflight_body_bytes=inflight_body_bytes)
            ingest = parts.ingest
            assert ingest is not None
            await serve_until_stopped(parts.live, lambda stop: ingest.serve(stop, sock),
                                      alongside=[_stop_when_orphaned], on_ready=parent.ready)
        finally:
            spool.close()

    try:
        run_loop(main, loop_name)
    except SidecarError as exc:
        log.error("ingest.failed", extra={"error": exc.message})
        raise SystemExit(exc.exit_code) from None


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """An ingest process whose parent died (SIGKILL, OOM) drains and exits instead of
    accepting deliveries that no process would deliver."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            log.error("ingest.orphaned", extra={"parent": parent})
            stop.set()
            return
        await wait_for_event(stop, 1.0)


class Supervisor:
    """The parent: holds the public port, keeps N ingest processes running, serves the
    delivery role."""

    def __init__(self, config: Config, spool: Spool, workers: int, loop_name: str) -> None:
        self.config = config
        self.workers = workers
        self.loop_name = loop_name
        self.spool = spool
        remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
        self._metrics_dir = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
        # The parent validates the TLS material too: a broken file fails the start with
        # one line, and the certificate gauges and readiness come from here.
        self.parts = compose(config, spool=spool,
                             metrics=Metrics(multiprocess_dir=Path(self._metrics_dir)),
                             ingest=False, delivery=True, max_connections=None,
                             extra_checks={"ingest": self._children_ready},
                             poll_interval_s=0.25)
        self.sock = public_socket(config, reuse_port=True)
        try:
            self.admin_sock = admin_socket(config)
        except OSError:
            self.sock.close()
            raise
        self._wake_rx, self._wake_tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[multiprocessing.process.BaseProcess | None] = [None] * workers
        self._ready_pids: set[int] = set()
        self._spawned_with: dict[int, Config] = {}  # pid -> the parent config it was given
        self._stopping = False

    def child_config(self) -> Config:
        """What a process started now gets: the start-up config, with the sections a
        reload may change taken from the parent's last good reload."""
        live = self.parts.live.config
        return replace(self.config, tls=live.tls, meta=live.meta)

    def _spawn(self, index: int) -> None:
        per_child = max(1, self.config.limits.max_connections // self.workers)
        live = self.parts.live.config
        proc = self._ctx.Process(
            target=_ingest_process_main, name=f"sidecar-ingest-{index}",
            args=(self.child_config(), self._wake_tx, self.loop_name, self._metrics_dir,
                  per_child, inflight_share(self.config, self.workers)),
            daemon=True)
        proc.start()
        self._children[index] = proc
        if proc.pid is not None:
            self._spawned_with[proc.pid] = live

    def _on_ready(self, pid: int) -> None:
        """A process said it is ready (its SIGHUP handler is installed).  Had the parent
        reloaded since handing it a config, it missed that reload's SIGHUP: send it now.
        (Any completed reload counts, changed or not: it may have swapped TLS files whose
        paths stayed the same, and one extra reload costs nothing.)"""
        self._ready_pids.add(pid)
        given = self._spawned_with.pop(pid, None)
        if given is not None and given is not self.parts.live.config:
            log.info("ingest.catching_up", extra={"pid": pid})
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    async def _children_ready(self) -> str | None:
        waiting = [i for i, p in enumerate(self._children)
                   if p is None or not p.is_alive() or p.pid not in self._ready_pids]
        return f"ingest processes not ready: {waiting}" if waiting else None

    async def _watch_children(self, stop: asyncio.Event) -> None:
        """Replace ingest processes that exit; back off (up to a minute) while they keep
        failing, so a broken environment does not turn into a fork loop."""
        failures = [0] * self.workers
        started = [time.monotonic()] * self.workers
        while not stop.is_set():
            for index, proc in enumerate(self._children):
                if proc is not None and not proc.is_alive() and not self._stopping:
                    log.error("ingest.exited", extra={"index": index, "exitcode": proc.exitcode})
                    _mark_dead(proc.pid, self._metrics_dir)
                    if proc.pid is not None:
                        self._ready_pids.discard(proc.pid)
                        self._spawned_with.pop(proc.pid, None)
                    lived = time.monotonic() - started[index]
                    failures[index] = 0 if lived > 60 else failures[index] + 1
                    delay = min(60.0, _CHILD_RESTART_DELAY_S * 2 ** failures[index])
                    if not await wait_for_event(stop, delay):
                        self._spawn(index)
                        started[index] = time.monotonic()
            await wait_for_event(stop, 0.5)

    def _forward(self, sig: int) -> None:
        """Signal every ingest process.  SIGHUP only reaches ready ones: before that a
        process has no handler yet (it would die), and it reads the config afresh."""
        for proc in self._children:
            if sig == signal.SIGHUP and proc is not None and proc.pid not in self._ready_pids:
                continue
            if proc is not None and proc.pid is not None and proc.is_alive():
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet_tls_errors)
        delivery = self.parts.delivery
        assert delivery is not None
        self._wake_rx.setblocking(False)
        loop.add_reader(self._wake_rx.fileno(), self._drain_wakeups, delivery)
        stop, reload_now = stop_and_reload_events(loop)
        delivery_stop = asyncio.Event()
        for index in range(self.workers):
            self._spawn(index)
        log_start(self.config, workers=self.workers)
        delivery_task = asyncio.create_task(delivery.serve(delivery_stop, self.admin_sock))
        watcher = asyncio.create_task(self._watch_children(stop))
        # The parent's own view (readiness, certificate gauges) reloads on the interval
        # too, and at once on SIGHUP, which is then forwarded to the children: the parent
        # first, so that a process spawned from here on gets the new config (one spawned
        # during the reload is caught up when ready).  One loop for both, so a SIGHUP that
        # changes the interval restarts the parent's wait with it.
        live = self.parts.live
        interval_reload = asyncio.create_task(live.reloader(
            stop, reload_now, after_now=lambda: self._forward(signal.SIGHUP)))
        freeze_startup_objects()
        try:
            await stop.wait()
        finally:
            self._stopping = True
            watcher.cancel()
            interval_reload.cancel()
            self._forward(signal.SIGTERM)
            await asyncio.to_thread(self._join_children)
            delivery_stop.set()
            await delivery_task
            loop.remove_reader(self._wake_rx.fileno())
            self.spool.close()
            self.sock.close()
            self.admin_sock.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            log.info("server.stopped")

    def _join_children(self) -> None:
        deadline = time.monotonic() + 15
        for proc in self._children:
            if proc is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2)

    def _drain_wakeups(self, delivery: DeliveryRole) -> None:
        try:
            while message := self._wake_rx.recv(64):
                if message.startswith(_READY):
                    self._on_ready(int(message[len(_READY):]))
        except (BlockingIOError, OSError, ValueError):
            pass
        delivery.wake()


_METRICS_PREFIX = "sidecar-metrics-"


def remove_stale_metrics_dirs(tmp: Path) -> None:
    """Remove the metrics folders of parents that died without cleaning up (SIGKILL,
    OOM): ``sidecar-metrics-<pid>-*`` of this user whose process no longer exists."""
    for folder in tmp.glob(f"{_METRICS_PREFIX}*-*"):
        pid_text = folder.name[len(_METRICS_PREFIX):].split("-", 1)[0]
        try:
            if not pid_text.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # alive under another user, or gone meanwhile


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
