"""The one composition root: what a serving process is made of, for its role.

Every entry point (one process, an ingest child, the delivering parent) calls
``compose`` with the roles it plays; ``delivery.mode`` is looked up once, here, and the
mode object builds both sides of it — what the ingest does with a checked delivery, and
what the delivering side runs (a worker, or a readiness check of the upstream).
Nothing else in the server branches on the mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from sidecar.app.admin import ReadinessCheck
from sidecar.config import Config
from sidecar.delivery.ingest import DirectIngest, Ingest, SpoolIngest
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.retry import RetryPolicy
from sidecar.delivery.worker import DeliveryWorker, WorkerSettings
from sidecar.metrics import Metrics
from sidecar.server.reload import LiveState
from sidecar.server.roles import DeliveryRole, IngestRole
from sidecar.spool import Spool, SpoolWriter
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["Parts", "compose"]


@dataclass(frozen=True, slots=True)
class Parts:
    live: LiveState
    ingest: IngestRole | None
    delivery: DeliveryRole | None


def compose(config: Config, *, spool: Spool, metrics: Metrics, ingest: bool, delivery: bool,
            wake: Callable[[], None] | None = None, max_connections: int | None,
            extra_checks: Mapping[str, ReadinessCheck] | None = None,
            poll_interval_s: float = 0.5, inflight_body_bytes: int | None = None) -> Parts:
    """Build the parts of one process.  ``wake`` tells a delivering process elsewhere that
    a commit happened (``--workers N``); with both roles here, the worker is woken
    directly.  ``max_connections`` and ``inflight_body_bytes`` are this process's share
    of the instance's limits (default: all of ``limits.max_inflight_body_bytes``)."""
    live = LiveState(config, metrics, max_connections=max_connections)
    mode = _MODES[config.delivery.mode]
    delivery_role = None
    if delivery:
        trust = _upstream_trust(config)
        worker, upstream, checks = mode.delivering_side(config, spool, metrics, trust,
                                                        poll_interval_s=poll_interval_s)
        delivery_role = DeliveryRole(live, spool, worker=worker, upstream=upstream,
                                     trust=trust, checks={**checks, **(extra_checks or {})})
        if wake is None:
            wake = delivery_role.wake
    ingest_role = None
    if ingest:
        assert wake is not None, "an ingest needs someone to wake"
        ingest_role = IngestRole(live, mode.ingest_side(config, spool, metrics, wake),
                                 inflight_body_bytes=inflight_body_bytes
                                 or config.limits.max_inflight_body_bytes)
    return Parts(live=live, ingest=ingest_role, delivery=delivery_role)


# --------------------------------------------------------------------------- modes

class _Mode(Protocol):
    def ingest_side(self, config: Config, spool: Spool, metrics: Metrics,
                    wake: Callable[[], None]) -> Ingest: ...

    def delivering_side(self, config: Config, spool: Spool, metrics: Metrics,
                        trust: UpstreamTrust | None, *, poll_interval_s: float
                        ) -> tuple[DeliveryWorker | None, UpstreamClient | None,
                                   dict[str, ReadinessCheck]]: ...


class _SpoolMode:
    """Meta's 200 means "durably stored"; a worker delivers in the background."""

    def ingest_side(self, config: Config, spool: Spool, metrics: Metrics,
                    wake: Callable[[], None]) -> Ingest:
        return SpoolIngest(SpoolWriter(spool), wake, metrics)

    def delivering_side(self, config: Config, spool: Spool, metrics: Metrics,
                        trust: UpstreamTrust | None, *, poll_interval_s: float
                        ) -> tuple[DeliveryWorker | None, UpstreamClient | None,
                                   dict[str, ReadinessCheck]]:
        return *_worker(config, spool, metrics, trust, poll_interval_s=poll_interval_s), {}


class _DirectMode:
    """Meta's 200 means "the upstream said 2xx"; the spool records ids (dedup) and
    quarantined changes.  Its only pending events are the ones ``spool replay`` puts
    back, which the delivering side's worker sends; it is ready only while the upstream
    accepts connections."""

    def ingest_side(self, config: Config, spool: Spool, metrics: Metrics,
                    wake: Callable[[], None]) -> Ingest:
        upstream = _upstream(config, _upstream_trust(config))
        return DirectIngest(spool, upstream, batch_max=config.upstream.batch_max,
                            metrics=metrics)

    def delivering_side(self, config: Config, spool: Spool, metrics: Metrics,
                        trust: UpstreamTrust | None, *, poll_interval_s: float
                        ) -> tuple[DeliveryWorker | None, UpstreamClient | None,
                                   dict[str, ReadinessCheck]]:
        url = config.upstream.url

        async def upstream_ready() -> str | None:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, port), timeout=2)
            except (OSError, TimeoutError):
                return "upstream does not accept connections"
            writer.close()
            return None

        return *_worker(config, spool, metrics, trust, poll_interval_s=poll_interval_s), {
            "upstream": upstream_ready}


_MODES: dict[str, _Mode] = {"spool": _SpoolMode(), "direct": _DirectMode()}


def _worker(config: Config, spool: Spool, metrics: Metrics, trust: UpstreamTrust | None, *,
            poll_interval_s: float) -> tuple[DeliveryWorker, UpstreamClient]:
    upstream = _upstream(config, trust)
    d = config.delivery
    policy = RetryPolicy(max_attempts=d.max_attempts, max_age_s=d.max_age_s,
                         backoff_initial_s=d.backoff_initial_s, backoff_max_s=d.backoff_max_s)
    settings = WorkerSettings(
        batch_max=config.upstream.batch_max, max_in_flight=config.upstream.max_in_flight,
        poll_interval_s=poll_interval_s,
        # A claim outlives its wait behind two rounds of sends (the worker's read-ahead),
        # its own send and the outcome's write, with a timeout to spare; a crash frees it
        # after this.
        lease_s=max(30.0, 4 * config.upstream.timeout_s))
    return DeliveryWorker(spool, upstream, policy=policy, settings=settings,
                          metrics=metrics), upstream


def _upstream(config: Config, trust: UpstreamTrust | None) -> UpstreamClient:
    return UpstreamClient(config.upstream.url, timeout_s=config.upstream.timeout_s,
                          signing_secret=config.upstream.signing_secret,
                          max_connections=config.upstream.max_in_flight, trust=trust)


def _upstream_trust(config: Config) -> UpstreamTrust | None:
    ca_file = config.upstream.ca_file
    return UpstreamTrust(ca_file) if ca_file is not None else None
