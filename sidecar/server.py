"""Wires the parts together and runs them: the only module that imports Hypercorn.

One process, one event loop: the public TLS listener, the admin listener, the
delivery worker and the reloader.  Signals only set events (huey): SIGTERM/SIGINT →
graceful stop (stop accepting, finish in-flight requests, leave the spool clean);
SIGHUP → reload now.  The reloader also runs every ``tls.reload_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from sidecar.app.admin import build_admin_app
from sidecar.app.public import RequestSettings, build_public_app
from sidecar.checks.signature import SignatureVerifier
from sidecar.config import Config, MetaConfig, load_config
from sidecar.delivery.ingest import DirectIngest, Ingest, SpoolIngest
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.worker import DeliveryWorker
from sidecar.errors import SidecarError
from sidecar.metrics import Metrics
from sidecar.spool import Spool, SpoolWriter
from sidecar.tls.holder import TLSHolder

__all__ = ["Server", "run_server"]

log = logging.getLogger("sidecar.server")

# Request line + headers larger than this get a 4xx (h11 answers 431) and the
# connection is closed.  Meta's requests carry a handful of short headers.
_MAX_HEADER_BYTES = 16 * 1024

HOUSEKEEPING_INTERVAL_S = 3600.0


class _ListenerConfig(HypercornConfig):
    """Hypercorn config whose SSL context is ours (reloadable, identity-checking)."""

    def __init__(self, context_factory: Callable[[], ssl.SSLContext]) -> None:
        super().__init__()
        self._context_factory = context_factory

    @property
    def ssl_enabled(self) -> bool:
        return True

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._context_factory()


def _settings_from(meta: MetaConfig) -> RequestSettings:
    return RequestSettings(verifier=SignatureVerifier(meta.app_secrets),
                           verify_token=meta.verify_token, unknown_fields=meta.unknown_fields)


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.holder = TLSHolder(
            config.tls, max_connections=config.limits.max_connections,
            on_refused=lambda reason: self.metrics.handshake_failures.labels(reason).inc())
        self._settings = _settings_from(config.meta)
        self.spool = Spool(config.delivery.spool_path,
                           max_spool_events=config.delivery.max_spool_events,
                           dedup_retention_s=config.delivery.dedup_retention_s)
        self.spool.take_ownership()
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self._warn_if_optional(config)

    # --------------------------------------------------------------- reloading

    def settings(self) -> RequestSettings:
        return self._settings

    def reload(self) -> None:
        """Re-read the config file and TLS files; keep everything old on any error."""
        try:
            config = load_config(self.config.path)
        except SidecarError as exc:
            self.metrics.config_reloads.labels("failure").inc()
            log.error("config.reload_failed", extra={"error": exc.message})
            return
        try:
            swapped = self.holder.reload(config.tls)
        except SidecarError as exc:
            self.metrics.tls_reloads.labels("failure").inc()
            log.error("tls.reload_failed", extra={"error": exc.message})
            return
        self._settings = _settings_from(config.meta)
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

    async def _reloader(self) -> None:
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.reload_event.wait(),
                                       self.config.tls.reload_interval_s)
            except TimeoutError:
                pass
            if self.stop_event.is_set():
                return
            self.reload_event.clear()
            await asyncio.to_thread(self.reload)

    async def _housekeeping(self) -> None:
        """Drop delivered events once they no longer serve dedup, so the file stays bounded."""
        while not self.stop_event.is_set():
            cutoff = time.time() - self.config.delivery.dedup_retention_s
            try:
                purged = await asyncio.to_thread(self.spool.purge, delivered_before=cutoff)
            except SidecarError as exc:
                log.error("spool.purge_failed", extra={"error": exc.message})
            else:
                if purged:
                    log.info("spool.purged", extra={"events": purged})
            try:
                await asyncio.wait_for(self.stop_event.wait(), HOUSEKEEPING_INTERVAL_S)
            except TimeoutError:
                pass

    # --------------------------------------------------------------- readiness

    async def _refresh_gauges(self, now: datetime) -> None:
        state = self.holder.state
        gauge = self.metrics.cert_expiry_seconds
        gauge.clear()
        for role, certs in (("server", state.material.server_chain),
                            ("client_ca", state.material.client_cas)):
            for facts in certs:
                gauge.labels(role, facts.subject, facts.file).set(facts.seconds_left(now))
        self.metrics.spool_depth.set(await asyncio.to_thread(self.spool.depth))
        self.metrics.open_connections.set(self.holder.active_connections)

    async def _certs_ready(self) -> str | None:
        leaf = self.holder.state.material.server_chain[0]
        return None if leaf.seconds_left(datetime.now(leaf.not_after.tzinfo)) > 0 else \
            "server certificate expired"

    async def _spool_ready(self) -> str | None:
        await asyncio.to_thread(self.spool.depth)
        return None

    async def _upstream_ready(self) -> str | None:
        parts = urlsplit(self.config.upstream.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port), timeout=2)
        except (OSError, TimeoutError):
            return "upstream does not accept connections"
        writer.close()
        return None

    # --------------------------------------------------------------- running

    def _hypercorn_configs(self) -> tuple[HypercornConfig, HypercornConfig]:
        c = self.config
        public = _ListenerConfig(self.holder.listener_context)
        public.bind = [_bind(c.listen.host, c.listen.port)]
        public.alpn_protocols = ["http/1.1"]
        # Hypercorn has no header timeout.  Its idle timer (keep_alive_timeout) starts
        # when a connection becomes idle (accepted, or the previous response sent) and
        # is stopped only once a request's headers are complete; bytes trickling in do
        # not reset it.  So it is a deadline for "the next request's headers", and it
        # must not be longer than header_timeout_s, or a slowloris client trickling a
        # header byte at a time would be kept for keepalive_timeout_s.  The price: an
        # idle keep-alive connection is closed after min(header, keepalive) seconds.
        public.keep_alive_timeout = min(c.limits.header_timeout_s, c.limits.keepalive_timeout_s)
        public.ssl_handshake_timeout = c.limits.header_timeout_s
        public.read_timeout = int(max(1, c.limits.body_timeout_s))
        public.h11_max_incomplete_size = _MAX_HEADER_BYTES
        public.backlog = min(4096, max(100, c.limits.max_connections))
        public.graceful_timeout = 10.0
        public.accesslog = None  # query strings may carry hub.verify_token; we log ourselves
        public.errorlog = logging.getLogger("sidecar.hypercorn")
        public.include_server_header = False
        admin = HypercornConfig()
        admin.bind = [_bind(c.admin.host, c.admin.port)]
        admin.accesslog = None
        admin.errorlog = logging.getLogger("sidecar.hypercorn")
        admin.graceful_timeout = 1.0
        return public, admin

    async def run(self) -> None:
        c = self.config
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_tls_errors)
        upstream = UpstreamClient(c.upstream.url, timeout_s=c.upstream.timeout_s,
                                  signing_secret=c.upstream.signing_secret,
                                  max_connections=c.upstream.max_in_flight)
        tasks: list[Awaitable[Any]] = []
        writer: SpoolWriter | None = None
        ingest: Ingest
        if c.delivery.mode == "spool":
            worker = DeliveryWorker(
                self.spool, upstream, batch_max=c.upstream.batch_max,
                max_in_flight=c.upstream.max_in_flight, max_attempts=c.delivery.max_attempts,
                max_age_s=c.delivery.max_age_s, backoff_initial_s=c.delivery.backoff_initial_s,
                backoff_max_s=c.delivery.backoff_max_s, metrics=self.metrics,
                # An in-flight claim outlives any single send; a crash frees it after this.
                lease_s=max(30.0, 3 * c.upstream.timeout_s))
            writer = SpoolWriter(self.spool)
            writer.start()
            ingest = SpoolIngest(writer, worker, self.metrics)
            worker_stop = asyncio.Event()
            worker_task = asyncio.create_task(worker.run(worker_stop))
        else:
            ingest = DirectIngest(self.spool, upstream, batch_max=c.upstream.batch_max,
                                  metrics=self.metrics)
            worker_stop = None
            worker_task = None

        public_app = build_public_app(
            path=c.listen.path, settings=self.settings, ingest=ingest, metrics=self.metrics,
            max_body_bytes=c.limits.max_body_bytes, body_timeout_s=c.limits.body_timeout_s)
        checks = {"certificates": self._certs_ready, "spool": self._spool_ready}
        if c.delivery.mode == "direct":
            checks["upstream"] = self._upstream_ready
        admin_app = build_admin_app(metrics=self.metrics, checks=checks,
                                    refresh_gauges=self._refresh_gauges)
        public_cfg, admin_cfg = self._hypercorn_configs()
        self._install_signals(loop)
        log.info("server.starting", extra={
            "listen": public_cfg.bind[0], "admin": admin_cfg.bind[0], "path": c.listen.path,
            "mode": c.delivery.mode, "client_auth": c.tls.client_auth})
        reloader = asyncio.create_task(self._reloader())
        housekeeping = asyncio.create_task(self._housekeeping())
        try:
            # Starlette is an ASGI app; Hypercorn's stricter protocol types don't see that.
            tasks = [
                hypercorn_serve(public_app, public_cfg,  # type: ignore[arg-type]
                                shutdown_trigger=self.stop_event.wait),
                hypercorn_serve(admin_app, admin_cfg,  # type: ignore[arg-type]
                                shutdown_trigger=self.stop_event.wait)]
            await asyncio.gather(*tasks)
        finally:
            # Public listener drained: no request can add to the spool any more.
            reloader.cancel()
            housekeeping.cancel()
            if worker_task is not None and worker_stop is not None:
                worker_stop.set()
                try:
                    await asyncio.wait_for(worker_task, timeout=c.upstream.timeout_s + 5)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            if writer is not None:
                await writer.aclose()
            await upstream.aclose()
            self.spool.close()
            log.info("server.stopped")

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_event.set)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quiet_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Refused handshakes are expected traffic, counted by the TLS holder; no tracebacks.
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        log.debug("tls.handshake_failed", extra={"error": type(exc).__name__})
        return
    loop.default_exception_handler(context)


def run_server(config_path: Path, *, loop: str = "auto") -> int:
    config = load_config(config_path)
    server = Server(config)
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            uvloop.run(server.run())
            return 0
    asyncio.run(server.run())
    return 0
