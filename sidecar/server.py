"""Wires the parts together and runs them (HTTP listeners: ``sidecar.listener``).

Two roles, composed by ``sidecar serve``:

* **ingest** — the public TLS listener: handshake identity check, request checks,
  normalize, commit to the spool (or forward, in direct mode);
* **delivery** — the admin listener, the delivery worker and spool housekeeping.

With one worker (``--workers 1``) both roles share one process and one event loop.
With ``--workers N`` the parent process keeps the delivery role and runs N spawned
ingest processes, each listening on the public port with ``SO_REUSEPORT`` so the kernel
spreads new connections across them (one shared socket would not: one process's accept
loop takes a whole burst of connections, and keep-alive keeps them there).  Python is
one core per process; the TLS handshakes, HTTP parsing and checks are the CPU-heavy part).
Ingest processes share the spool file (commits queue on a kernel file lock; event ids
are primary keys, so dedup holds across processes) and wake the delivery worker with a
datagram after each commit.  Metrics use Prometheus's multiprocess mode so the parent's
``/metrics`` shows every process.

Signals only set events (huey): SIGTERM/SIGINT → graceful stop (stop accepting, finish
in-flight requests, leave the spool clean); SIGHUP → reload now (the parent forwards it
to every ingest process).  Each process also reloads every ``tls.reload_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.app.admin import build_admin_app
from sidecar.app.public import RequestSettings, build_public_app
from sidecar.checks.signature import SignatureVerifier
from sidecar.config import Config, load_config
from sidecar.delivery.ingest import DirectIngest, Ingest, SpoolIngest
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.worker import DeliveryWorker
from sidecar.errors import SidecarError, SpoolUnavailable
from sidecar.listener import Listener, ListenerLimits, bind_socket
from sidecar.logs import Throttle, setup_logging
from sidecar.metrics import CertExpiry, Metrics
from sidecar.spool import Spool, SpoolWriter
from sidecar.tls.holder import TLSHolder
from sidecar.tls.material import CertFacts
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["run_server", "default_workers"]

log = logging.getLogger("sidecar.server")

HOUSEKEEPING_INTERVAL_S = 3600.0
REFUSAL_LOG_INTERVAL_S = 10.0  # per reason; every refusal is counted in the metrics
_CHILD_RESTART_DELAY_S = 1.0


# =========================================================================== shared parts

class LiveState:
    """Config, TLS state and request settings of one process, reloadable as one.

    ``reload()`` re-reads the config file and the TLS files; on any error everything old
    keeps serving (ghostunnel's rule: validate fully, then swap)."""

    def __init__(self, config: Config, metrics: Metrics, *, max_connections: int | None) -> None:
        self.config = config
        self.metrics = metrics
        self._refusals = Throttle(REFUSAL_LOG_INTERVAL_S)
        self.holder = TLSHolder(
            config.tls, max_connections=max_connections,
            on_connections=metrics.open_connections.set,
            on_refused=self._refused)
        self._settings = _settings_from(config)
        self._warn_if_optional(config)

    def settings(self) -> RequestSettings:
        return self._settings

    def _refused(self, reason: str, facts: dict[str, object]) -> None:
        self.metrics.handshake_failures.labels(reason).inc()
        left_out = self._refusals.allow(reason)
        if left_out is not None:
            # A trusted certificate with a name not allowed is a config matter (or Meta
            # changed its name): say it louder than scanners and clients without one.
            level = logging.WARNING if reason == "name_not_allowed" else logging.INFO
            log.log(level, "tls.handshake_refused",
                    extra={"reason": reason, **facts, "similar_left_out": left_out})

    def reload(self) -> None:
        try:
            config = load_config(self.config.path)
        except SidecarError as exc:
            self.metrics.config_reloads.labels("failure").inc()
            log.error("config.reload_failed", extra={"error": exc.message})
            return
        except Exception as exc:  # never let one odd file end reloading (or the server)
            self.metrics.config_reloads.labels("failure").inc()
            log.error("config.reload_failed", extra={"error": type(exc).__name__})
            return
        try:
            swapped = self.holder.reload(config.tls)
        except SidecarError as exc:
            self.metrics.tls_reloads.labels("failure").inc()
            log.error("tls.reload_failed", extra={"error": exc.message})
            return
        except Exception as exc:
            self.metrics.tls_reloads.labels("failure").inc()
            log.error("tls.reload_failed", extra={"error": type(exc).__name__})
            return
        self._settings = _settings_from(config)
        self.config = config
        self.metrics.config_reloads.labels("success").inc()
        if swapped:
            self.metrics.tls_reloads.labels("success").inc()
            log.info("tls.reloaded", extra={"generation": self.holder.state.generation})
        self._warn_if_optional(config)

    def _warn_if_optional(self, config: Config) -> None:
        optional = config.tls.client_auth == "optional"
        self.metrics.client_auth_optional.set(1 if optional else 0)
        if optional:
            log.warning("tls.client_auth_optional", extra={
                "detail": "clients without a certificate are admitted (onboarding mode); "
                          "switch tls.client_auth to required once mTLS is enabled for the app"})

    async def reloader(self, stop: asyncio.Event, now: asyncio.Event) -> None:
        """Reload every ``tls.reload_interval_s``, and at once when ``now`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(now.wait(), self.config.tls.reload_interval_s)
            except TimeoutError:
                pass
            if stop.is_set():
                return
            now.clear()
            await asyncio.to_thread(self.reload)


def _settings_from(config: Config) -> RequestSettings:
    meta = config.meta
    return RequestSettings(verifier=SignatureVerifier(meta.app_secrets),
                           verify_token=meta.verify_token, unknown_fields=meta.unknown_fields)


def _listener_limits(config: Config, *, graceful_timeout_s: float) -> ListenerLimits:
    c = config.limits
    return ListenerLimits(header_timeout_s=c.header_timeout_s,
                          keepalive_timeout_s=c.keepalive_timeout_s,
                          handshake_timeout_s=c.header_timeout_s,
                          graceful_timeout_s=graceful_timeout_s)


def _public_socket(config: Config, *, reuse_port: bool) -> socket.socket:
    """``reuse_port`` for ``--workers N``: each ingest process listens on its own socket
    (one shared socket would not spread the load: one process's accept loop takes a whole
    burst of connections, and keep-alive keeps them there).  The parent binds one and
    never listens on it, to fail early (one line) when the port is taken and to hold it
    for the ingest processes (a bound, non-listening socket gets no connections)."""
    return bind_socket(config.listen.host, config.listen.port, reuse_port=reuse_port)


def _admin_socket(config: Config) -> socket.socket:
    return bind_socket(config.admin.host, config.admin.port)


def _backlog(config: Config) -> int:
    return min(4096, max(100, config.limits.max_connections))


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quiet_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Refused handshakes are expected traffic, counted by the TLS holder; no tracebacks.
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        log.debug("tls.handshake_failed", extra={"error": type(exc).__name__})
        return
    loop.default_exception_handler(context)


def _open_spool(config: Config) -> Spool:
    return Spool(config.delivery.spool_path, max_spool_events=config.delivery.max_spool_events,
                 dedup_retention_s=config.delivery.dedup_retention_s)


def _upstream(config: Config, trust: UpstreamTrust | None) -> UpstreamClient:
    return UpstreamClient(config.upstream.url, timeout_s=config.upstream.timeout_s,
                          signing_secret=config.upstream.signing_secret,
                          max_connections=config.upstream.max_in_flight, trust=trust)


def _upstream_trust(config: Config) -> UpstreamTrust | None:
    ca_file = config.upstream.ca_file
    return UpstreamTrust(ca_file) if ca_file is not None else None


# =========================================================================== roles

class IngestRole:
    """The public listener's request path, on top of one process's ``LiveState``."""

    def __init__(self, live: LiveState, spool: Spool, wake: Callable[[], None]) -> None:
        self.live = live
        config = live.config
        self._writer: SpoolWriter | None = None
        self._upstream: UpstreamClient | None = None
        ingest: Ingest
        if config.delivery.mode == "spool":
            self._writer = SpoolWriter(spool)
            ingest = SpoolIngest(self._writer, wake, live.metrics)
        else:
            self._upstream = _upstream(config, _upstream_trust(config))
            ingest = DirectIngest(spool, self._upstream, batch_max=config.upstream.batch_max,
                                  metrics=live.metrics)
        self.app = build_public_app(
            path=config.listen.path, settings=live.settings, ingest=ingest, metrics=live.metrics,
            max_body_bytes=config.limits.max_body_bytes,
            body_timeout_s=config.limits.body_timeout_s)

    async def serve(self, stop: asyncio.Event, sock: socket.socket) -> None:
        if self._writer is not None:
            self._writer.start()
        listener = Listener(self.app, sock, ssl_context=self.live.holder.listener_context(),
                            backlog=_backlog(self.live.config),
                            limits=_listener_limits(self.live.config, graceful_timeout_s=10.0))
        try:
            await listener.serve(stop)
        finally:
            # Listener drained: no request can add to the spool any more.
            if self._writer is not None:
                await self._writer.aclose()
            if self._upstream is not None:
                await self._upstream.aclose()


class DeliveryRole:
    """Admin listener, delivery worker and housekeeping, on a spool this process owns."""

    def __init__(self, live: LiveState, spool: Spool, *,
                 extra_checks: dict[str, Callable[[], Awaitable[str | None]]] | None = None,
                 poll_interval_s: float = 0.5) -> None:
        self.live = live
        self.spool = spool
        config = live.config
        self.worker: DeliveryWorker | None = None
        self._trust = _upstream_trust(config)  # also what the expiry gauge reports
        self._upstream: UpstreamClient | None = None  # direct mode: the ingest side sends
        if config.delivery.mode == "spool":
            self._upstream = _upstream(config, self._trust)
            self.worker = DeliveryWorker(
                spool, self._upstream, batch_max=config.upstream.batch_max,
                max_in_flight=config.upstream.max_in_flight,
                max_attempts=config.delivery.max_attempts, max_age_s=config.delivery.max_age_s,
                backoff_initial_s=config.delivery.backoff_initial_s,
                backoff_max_s=config.delivery.backoff_max_s, metrics=live.metrics,
                poll_interval_s=poll_interval_s,
                # An in-flight claim outlives any single send; a crash frees it after this.
                lease_s=max(30.0, 3 * config.upstream.timeout_s))
        checks: dict[str, Callable[[], Awaitable[str | None]]] = {
            "certificates": self._certs_ready, "spool": self._spool_ready}
        if config.delivery.mode == "direct":
            checks["upstream"] = self._upstream_ready
        checks.update(extra_checks or {})
        live.metrics.watch_certificates(self._loaded_certificates)
        self.app = build_admin_app(metrics=live.metrics, checks=checks,
                                   refresh_gauges=self._refresh_gauges)

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def serve(self, stop: asyncio.Event, sock: socket.socket) -> None:
        """Run until ``stop``; the caller stops the ingest side first."""
        worker_stop = asyncio.Event()
        worker_task = (asyncio.create_task(self.worker.run(worker_stop))
                       if self.worker is not None else None)
        housekeeping = asyncio.create_task(self._housekeeping(stop))
        try:
            await Listener(self.app, sock, backlog=128, limits=_listener_limits(
                self.live.config, graceful_timeout_s=1.0)).serve(stop)
        finally:
            housekeeping.cancel()
            if worker_task is not None:
                worker_stop.set()
                try:
                    await asyncio.wait_for(worker_task,
                                           timeout=self.live.config.upstream.timeout_s + 5)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            if self._upstream is not None:
                await self._upstream.aclose()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Drop delivered events once they no longer serve dedup, so the file stays bounded."""
        while not stop.is_set():
            cutoff = time.time() - self.live.config.delivery.dedup_retention_s
            try:
                purged = await asyncio.to_thread(self.spool.purge, delivered_before=cutoff)
            except SidecarError as exc:
                log.error("spool.purge_failed", extra={"error": exc.message})
            else:
                if purged:
                    log.info("spool.purged", extra={"events": purged})
            try:
                await asyncio.wait_for(stop.wait(), HOUSEKEEPING_INTERVAL_S)
            except TimeoutError:
                pass

    def _loaded_certificates(self) -> list[CertExpiry]:
        material = self.live.holder.state.material  # this process's, reloaded like the others'
        now = datetime.now(timezone.utc)
        upstream_cas: tuple[CertFacts, ...] = ()
        if self._trust is not None:
            self._trust.context()  # re-read a changed file now, as the next connection would
            upstream_cas = self._trust.certificates
        return [(role, facts.subject, facts.file, facts.seconds_left(now))
                for role, certs in (("server", material.server_chain),
                                    ("client_ca", material.client_cas),
                                    ("upstream_ca", upstream_cas))
                for facts in certs]

    async def _refresh_gauges(self) -> None:
        depth, oldest_age = await asyncio.to_thread(self.spool.backlog)
        self.live.metrics.spool_depth.set(depth)
        self.live.metrics.spool_oldest_age.set(oldest_age or 0.0)

    async def _certs_ready(self) -> str | None:
        leaf = self.live.holder.state.material.server_chain[0]
        return None if leaf.seconds_left(datetime.now(leaf.not_after.tzinfo)) > 0 else \
            "server certificate expired"

    async def _spool_ready(self) -> str | None:
        try:
            await asyncio.to_thread(self.spool.check_writable)
        except SpoolUnavailable:
            return "spool not writable"
        return None

    async def _upstream_ready(self) -> str | None:
        parts = urlsplit(self.live.config.upstream.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port), timeout=2)
        except (OSError, TimeoutError):
            return "upstream does not accept connections"
        writer.close()
        return None


def _stop_and_reload_events(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Event,
                                                                        asyncio.Event]:
    stop, reload_now = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    return stop, reload_now


# =========================================================================== one process

async def _serve_single(config: Config, spool: Spool, public_sock: socket.socket,
                        admin_sock: socket.socket) -> None:
    metrics = Metrics()
    live = LiveState(config, metrics, max_connections=config.limits.max_connections)
    try:
        delivery = DeliveryRole(live, spool)
        ingest = IngestRole(live, spool, delivery.wake)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_tls_errors)
        stop, reload_now = _stop_and_reload_events(loop)
        delivery_stop = asyncio.Event()
        _log_start(config, workers=1)
        reloader = asyncio.create_task(live.reloader(stop, reload_now))
        delivery_task = asyncio.create_task(delivery.serve(delivery_stop, admin_sock))
        _freeze_startup_objects()
        try:
            await ingest.serve(stop, public_sock)
        finally:
            reloader.cancel()
            delivery_stop.set()
            await delivery_task
    finally:
        spool.close()
        log.info("server.stopped")


def _log_start(config: Config, *, workers: int) -> None:
    log.info("server.starting", extra={
        "listen": _bind(config.listen.host, config.listen.port),
        "admin": _bind(config.admin.host, config.admin.port), "path": config.listen.path,
        "mode": config.delivery.mode, "client_auth": config.tls.client_auth,
        "workers": workers})


# =========================================================================== N processes

_WAKE = b"!"
_READY = b"ready:"


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
                         metrics_dir: str, max_connections: int) -> None:
    """Entry point of one spawned ingest process.

    It gets the parent's validated start-up config (not the file: a replacement process
    must not pick up a spool path or port the parent is not using); its own reloads then
    re-read the TLS and secret settings from the file like every process's do."""
    setup_logging(config.logging.level, config.logging.format)
    try:
        sock = _public_socket(config, reuse_port=True)
    except OSError as exc:
        log.error("ingest.failed", extra={"error": f"cannot listen: {exc.strerror or exc}"})
        raise SystemExit(1) from None

    async def main() -> None:
        metrics = Metrics(multiprocess_dir=Path(metrics_dir))
        live = LiveState(config, metrics, max_connections=max_connections)
        spool = _open_spool(config)
        try:
            parent = _ParentWake(wake_sock)
            ingest = IngestRole(live, spool, parent)
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(_quiet_tls_errors)
            stop, reload_now = _stop_and_reload_events(loop)
            parent.ready()
            reloader = asyncio.create_task(live.reloader(stop, reload_now))
            orphan_watch = asyncio.create_task(_stop_when_orphaned(stop))
            _freeze_startup_objects()
            try:
                await ingest.serve(stop, sock)
            finally:
                reloader.cancel()
                orphan_watch.cancel()
        finally:
            spool.close()

    try:
        _run_loop(main, loop_name)
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
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


class _Supervisor:
    """The parent: holds the public port, keeps N ingest processes running, serves the
    delivery role."""

    def __init__(self, config: Config, spool: Spool, workers: int, loop_name: str) -> None:
        self.config = config
        self.workers = workers
        self.loop_name = loop_name
        self._metrics_dir = tempfile.mkdtemp(prefix="sidecar-metrics-")
        self.metrics = Metrics(multiprocess_dir=Path(self._metrics_dir))
        # The parent validates the TLS material too: a broken file fails the start with
        # one line, and the certificate gauges and readiness come from here.
        self.live = LiveState(config, self.metrics, max_connections=None)
        self.spool = spool
        self.sock = _public_socket(config, reuse_port=True)
        try:
            self.admin_sock = _admin_socket(config)
        except OSError:
            self.sock.close()
            raise
        self._wake_rx, self._wake_tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[multiprocessing.process.BaseProcess | None] = [None] * workers
        self._ready_pids: set[int] = set()
        self._stopping = False

    def _spawn(self, index: int) -> None:
        per_child = max(1, self.config.limits.max_connections // self.workers)
        proc = self._ctx.Process(
            target=_ingest_process_main, name=f"sidecar-ingest-{index}",
            args=(self.config, self._wake_tx, self.loop_name, self._metrics_dir, per_child),
            daemon=True)
        proc.start()
        self._children[index] = proc

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
                    lived = time.monotonic() - started[index]
                    failures[index] = 0 if lived > 60 else failures[index] + 1
                    delay = min(60.0, _CHILD_RESTART_DELAY_S * 2 ** failures[index])
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
                    if not stop.is_set():
                        self._spawn(index)
                        started[index] = time.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

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
        loop.set_exception_handler(_quiet_tls_errors)
        delivery = DeliveryRole(self.live, self.spool,
                                extra_checks={"ingest": self._children_ready},
                                poll_interval_s=0.25)
        self._wake_rx.setblocking(False)
        loop.add_reader(self._wake_rx.fileno(), self._drain_wakeups, delivery)
        stop, reload_now = _stop_and_reload_events(loop)
        delivery_stop = asyncio.Event()
        for index in range(self.workers):
            self._spawn(index)
        _log_start(self.config, workers=self.workers)
        delivery_task = asyncio.create_task(delivery.serve(delivery_stop, self.admin_sock))
        watcher = asyncio.create_task(self._watch_children(stop))
        # The parent's own view (readiness, certificate gauges) reloads on the interval
        # too; SIGHUP is handled below, once for itself and forwarded to the children.
        interval_reload = asyncio.create_task(self.live.reloader(stop, asyncio.Event()))
        _freeze_startup_objects()
        try:
            while not stop.is_set():
                waiters = [asyncio.ensure_future(stop.wait()),
                           asyncio.ensure_future(reload_now.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if reload_now.is_set() and not stop.is_set():
                    reload_now.clear()
                    self._forward(signal.SIGHUP)
                    await asyncio.to_thread(self.live.reload)
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
                    self._ready_pids.add(int(message[len(_READY):]))
        except (BlockingIOError, OSError, ValueError):
            pass
        delivery.wake()


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


# =========================================================================== entry point

def _freeze_startup_objects() -> None:
    """Take what start-up built (modules, config, TLS state, metrics) out of the cyclic
    collector's reach, so a full collection scans only what requests allocate since.

    A full (generation 2) collection used to stop a serving process for 12-27 ms, a few
    times a minute under load: every request in flight waited that long.  Frozen, those
    collections took 0.1-0.4 ms (bench/RESULTS.md).  Objects made later, such as each
    connection's transport/protocol cycle that frees its connection slot, are collected
    as before; start-up objects that become cyclic garbage after a reload are kept (a
    few kilobytes, once)."""
    gc.collect()  # not freeze start-up's own garbage
    gc.freeze()


def _run_loop(main: Callable[[], Awaitable[None]], loop_name: str) -> None:
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


def default_workers(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """One ingest process per CPU this process may use: its affinity mask, capped by a
    cgroup v2 CPU quota (a container limited to 1.5 CPUs gets 2, to 1 CPU gets 1).
    Measured on 2 CPUs (bench/RESULTS.md): 2 ingest processes beat 1 by 15-30%."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def run_server(config_path: Path, *, loop: str = "auto", workers: int = 1) -> int:
    config = load_config(config_path)
    # Before any loop or log line: a spool another process delivers from is a one-line
    # refusal (the worker requeues every in-flight claim at start; two would collide).
    spool = _open_spool(config)
    try:
        spool.take_ownership()
    except SidecarError:
        spool.close()
        raise
    if workers <= 1:
        try:
            with contextlib.ExitStack() as sockets:  # closed however the run ends
                public_sock = sockets.enter_context(_public_socket(config, reuse_port=False))
                admin_sock = sockets.enter_context(_admin_socket(config))
                _run_loop(lambda: _serve_single(config, spool, public_sock, admin_sock), loop)
        finally:
            spool.close()  # idempotent; _serve_single closes it when it ran
        return 0
    try:
        supervisor = _Supervisor(config, spool, workers, loop)
    except BaseException:
        spool.close()
        raise
    _run_loop(supervisor.run, loop)
    return 0
