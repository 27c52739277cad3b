"""The two jobs a serving process can have, each given its parts by ``compose``.

* **ingest** — the public TLS listener: handshake identity check, request checks,
  normalize, commit to the spool (or forward, in direct mode);
* **delivery** — the admin listener, the delivery worker and spool housekeeping.

One process may have both (``--workers 1``); with ``--workers N`` the parent keeps the
delivery role and N ingest processes share the public port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone

from sidecar.app.admin import ReadinessCheck, build_admin_app
from sidecar.app.budget import BodyBudget
from sidecar.app.public import build_public_app
from sidecar.clock import wait_for_event
from sidecar.delivery.ingest import Ingest
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.worker import DeliveryWorker
from sidecar.errors import SidecarError, SpoolUnavailable
from sidecar.metrics import CertExpiry
from sidecar.server import memory
from sidecar.server.fds import public_backlog
from sidecar.server.listen import Listener, ListenerLimits
from sidecar.server.reload import LiveState
from sidecar.spool import Spool
from sidecar.tls.material import CertFacts
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["IngestRole", "DeliveryRole", "HOUSEKEEPING_INTERVAL_S"]

log = logging.getLogger("sidecar.server")

HOUSEKEEPING_INTERVAL_S = 3600.0
_INGEST_GRACEFUL_S = 10.0
_ADMIN_GRACEFUL_S = 1.0


def listener_limits(live: LiveState, *, graceful_timeout_s: float) -> ListenerLimits:
    c = live.config.limits
    return ListenerLimits(header_timeout_s=c.header_timeout_s,
                          keepalive_timeout_s=c.keepalive_timeout_s,
                          handshake_timeout_s=c.header_timeout_s,
                          graceful_timeout_s=graceful_timeout_s)


class IngestRole:
    """The public listener's request path, on top of one process's ``LiveState``."""

    def __init__(self, live: LiveState, ingest: Ingest, *, inflight_body_bytes: int) -> None:
        self.live = live
        self._ingest = ingest
        config = live.config
        budget = BodyBudget(inflight_body_bytes, on_change=live.metrics.inflight_body_bytes.set,
                            on_drained=memory.TrimAfterBurst())
        self.app = build_public_app(
            path=config.listen.path, settings=live.settings, ingest=ingest, metrics=live.metrics,
            max_body_bytes=config.limits.max_body_bytes,
            body_timeout_s=config.limits.body_timeout_s, budget=budget,
            max_events_per_delivery=config.limits.max_events_per_delivery)

    async def serve(self, stop: asyncio.Event, sock: socket.socket) -> None:
        config = self.live.config
        requests = self.live.metrics.requests
        listener = Listener(self.app, sock, ssl_context=self.live.holder.listener_context(),
                            backlog=public_backlog(config.limits.max_connections),
                            limits=listener_limits(self.live,
                                                   graceful_timeout_s=_INGEST_GRACEFUL_S),
                            count_refused=lambda outcome: requests.labels(outcome).inc())
        try:
            await listener.serve(stop)
        finally:
            # Listener drained: no request can add to the spool any more.
            await self._ingest.aclose()


class DeliveryRole:
    """Admin listener, delivery worker (spool mode) and housekeeping, on a spool this
    process owns."""

    def __init__(self, live: LiveState, spool: Spool, *, worker: DeliveryWorker | None,
                 upstream: UpstreamClient | None, trust: UpstreamTrust | None,
                 checks: Mapping[str, ReadinessCheck]) -> None:
        self.live = live
        self.spool = spool
        self.worker = worker
        self._upstream = upstream  # the worker's, closed after it stops
        self._trust = trust  # what the upstream_ca expiry gauge reports
        all_checks: dict[str, ReadinessCheck] = {
            "certificates": self._certs_ready, "spool": self._spool_ready, **checks}
        live.metrics.watch_certificates(self._loaded_certificates)
        self.app = build_admin_app(metrics=live.metrics, checks=all_checks,
                                   refresh_gauges=self._refresh_gauges)

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def serve(self, stop: asyncio.Event, sock: socket.socket) -> None:
        """Run until ``stop``; the caller stops the ingest side first."""
        worker_stop = asyncio.Event()
        worker_task = (asyncio.create_task(self.worker.run(worker_stop))
                       if self.worker is not None else None)
        # A shared spool's commits on other machines wake this worker too.
        watch_task = (asyncio.create_task(self.spool.watch_commits(self.wake, worker_stop))
                      if self.worker is not None else None)
        housekeeping = asyncio.create_task(self._housekeeping(stop))
        try:
            await Listener(self.app, sock, backlog=128, limits=listener_limits(
                self.live, graceful_timeout_s=_ADMIN_GRACEFUL_S)).serve(stop)
        finally:
            housekeeping.cancel()
            if worker_task is not None:
                worker_stop.set()
                try:
                    await asyncio.wait_for(worker_task,
                                           timeout=self.live.config.upstream.timeout_s + 5)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            if watch_task is not None:
                watch_task.cancel()
                await asyncio.gather(watch_task, return_exceptions=True)
            if self._upstream is not None:
                await self._upstream.aclose()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Drop delivered events once they no longer serve dedup, and dead letters and
        quarantined changes once ``dead_retention_s`` has passed, so the file stays
        bounded."""
        while not stop.is_set():
            d = self.live.config.delivery
            now = time.time()
            try:
                purged = await self.spool.purge(delivered_before=now - d.dedup_retention_s,
                                                dead_before=now - d.dead_retention_s,
                                                quarantined_before=now - d.dead_retention_s)
            except SidecarError as exc:
                log.error("spool.purge_failed", extra={"error": exc.message})
            else:
                if purged.total:
                    log.info("spool.purged", extra={
                        "events": purged.delivered, "dead": purged.dead,
                        "quarantined": purged.quarantined})
            await wait_for_event(stop, HOUSEKEEPING_INTERVAL_S)

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
        try:
            stats = await self.spool.stats()
        except SpoolUnavailable:
            # The spool's own outage log says why; /metrics must still answer then
            # (the 503 counts are what an alert reads), with the last values it saw.
            return
        m = self.live.metrics
        m.spool_depth.set(stats.pending + stats.in_flight)
        m.spool_oldest_age.set(stats.oldest_pending_age_s or 0.0)
        m.spool_dead.set(stats.dead)
        m.spool_quarantined.set(stats.quarantined)
        m.spool_disk_full.set(1 if stats.disk_full else 0)

    async def _certs_ready(self) -> str | None:
        leaf = self.live.holder.state.material.server_chain[0]
        return None if leaf.seconds_left(datetime.now(leaf.not_after.tzinfo)) > 0 else \
            "server certificate expired"

    async def _spool_ready(self) -> str | None:
        try:
            await self.spool.check_writable()
        except SpoolUnavailable as exc:
            return exc.message  # short and safe: "spool disk full", "spool full", ...
        return None

