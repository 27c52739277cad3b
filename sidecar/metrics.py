"""Prometheus handles, built once per process and passed to whoever records.

A private ``CollectorRegistry`` (not the global default) so tests and several apps in
one process never collide.  Names follow Prometheus conventions (``_total``,
``_seconds``).  Nothing here ever records a secret or a request body.

With several processes (``serve --workers N``) every process is built with the same
``multiprocess_dir``: values then live in prometheus_client's memory-mapped files and
``render()`` (in the parent) merges them — the library's multiprocess mode.  Gauges say
how to merge (``multiprocess_mode``); that argument is ignored in one process.

Certificate expiry is not a stored value but computed at scrape time from the
certificates loaded then (``watch_certificates``), so a certificate a reload replaced
leaves the output with it; a multiprocess gauge cannot drop a label and would keep
reporting the old certificate, which then "expires" and pages whoever just rotated it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["Metrics", "CertExpiry"]

# (role, subject, file, seconds until it expires) for one loaded certificate
CertExpiry = tuple[str, str, str, float]


def _use_multiprocess_values(directory: Path) -> None:
    # prometheus_client picks its value class from PROMETHEUS_MULTIPROC_DIR when it is
    # first imported; we decide at run time (``--workers``), so set both here, before
    # the first metric of this process is built.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    _values.ValueClass = _values.MultiProcessValue()  # type: ignore[no-untyped-call]


# No ``*_created`` series (a switch for the whole process): the multiprocess collector has
# none, so /metrics reads the same whatever the worker count, and scrapes carry half the
# series.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            _use_multiprocess_values(multiprocess_dir)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sidecar_requests_total", "Requests on the public listener by outcome.",
            ["outcome"], registry=r)
        self.handshake_failures = Counter(
            "sidecar_tls_handshake_failures_total",
            "TLS handshakes refused (no/untrusted client certificate, name not allowed, ...).",
            ["reason"], registry=r)
        self.signature_failures = Counter(
            "sidecar_signature_failures_total", "POSTs refused for a bad or missing signature.",
            registry=r)
        self.events_spooled = Counter(
            "sidecar_events_spooled_total", "Events durably stored.", registry=r)
        self.events_duplicate = Counter(
            "sidecar_events_duplicate_total", "Events dropped as repeats of a stored id.",
            registry=r)
        self.events_quarantined = Counter(
            "sidecar_events_quarantined_total", "Changes quarantined for breaking their schema.",
            registry=r)
        self.events_delivered = Counter(
            "sidecar_events_delivered_total", "Events the upstream accepted (2xx).", registry=r)
        self.events_retried = Counter(
            "sidecar_events_retried_total", "Delivery attempts that failed and were rescheduled.",
            registry=r)
        self.events_dead = Counter(
            "sidecar_events_dead_total", "Events moved to dead letters.", registry=r)
        self.delivery_latency = Histogram(
            "sidecar_delivery_latency_seconds",
            "From receipt to the upstream's 2xx, per event.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=r)
        self.upstream_request_seconds = Histogram(
            "sidecar_upstream_request_seconds", "Duration of one request to the upstream.",
            registry=r)
        self.spool_depth = Gauge(
            "sidecar_spool_depth", "Events stored and not yet delivered or dead.",
            multiprocess_mode="livemax", registry=r)
        self.spool_oldest_age = Gauge(
            "sidecar_spool_oldest_age_seconds",
            "Seconds since the oldest event not yet delivered or dead was received (0 when "
            "there is none): how far delivery lags, whatever the depth.",
            multiprocess_mode="livemax", registry=r)
        self.spool_dead = Gauge(
            "sidecar_spool_dead", "Dead letters kept (listable, replayable) until "
            "delivery.dead_retention_s.", multiprocess_mode="livemax", registry=r)
        self.spool_quarantined = Gauge(
            "sidecar_spool_quarantined", "Quarantined changes not yet replayed.",
            multiprocess_mode="livemax", registry=r)
        self.spool_disk_full = Gauge(
            "sidecar_spool_disk_full",
            "1 while new deliveries get 503 because the spool's disk is (nearly) full "
            "(free space below delivery.spool_reserve_bytes); the backlog keeps draining.",
            multiprocess_mode="livemax", registry=r)
        self.inflight_body_bytes = Gauge(
            "sidecar_inflight_body_bytes",
            "Request body bytes held in memory now (capped by "
            "limits.max_inflight_body_bytes).", multiprocess_mode="livesum", registry=r)
        self.open_connections = Gauge(
            "sidecar_open_connections",
            "Connections on the public listener, counted from accept (TLS handshakes in "
            "progress included; capped by limits.max_connections).", multiprocess_mode="livesum", registry=r)
        self._cert_expiry = _CertExpiryCollector()
        r.register(self._cert_expiry)
        self.tls_reloads = Counter(
            "sidecar_tls_reloads_total", "TLS material reloads by result.", ["result"],
            registry=r)
        self.config_reloads = Counter(
            "sidecar_config_reloads_total", "Config (names, secrets, client_auth) reloads.",
            ["result"], registry=r)
        self.client_auth_optional = Gauge(
            "sidecar_client_auth_optional",
            "1 while tls.client_auth is 'optional' (onboarding): deliveries admitted on the "
            "signature alone.", multiprocess_mode="livemax", registry=r)
        # Shown at 0 from the start, so that an alert on a failure's rate has a series to
        # compare with before the first reload happens.
        for result in ("success", "failure"):
            self.tls_reloads.labels(result=result)
            self.config_reloads.labels(result=result)

    def watch_certificates(self, loaded: Callable[[], list[CertExpiry]]) -> None:
        """Report ``loaded()`` as ``sidecar_certificate_expiry_seconds`` at every scrape
        (in the process that renders: the one serving /metrics)."""
        self._cert_expiry.loaded = loaded

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        merged.register(self._cert_expiry)  # computed here, not merged from files
        return generate_latest(merged)


class _CertExpiryCollector(Collector):
    NAME = "sidecar_certificate_expiry_seconds"
    HELP = "Seconds until each loaded certificate expires (negative once expired)."

    def __init__(self) -> None:
        self.loaded: Callable[[], list[CertExpiry]] = list

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Two certificates can share role, subject and file (a cross-signed or renewed CA
        # in one bundle): one series each, reporting the one that expires first.
        soonest: dict[tuple[str, str, str], float] = {}
        for role, subject, file, seconds in self.loaded():
            key = (role, subject, file)
            soonest[key] = min(seconds, soonest.get(key, seconds))
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["role", "subject", "file"])
        for labels, seconds in soonest.items():
            family.add_metric(list(labels), seconds)
        yield family
