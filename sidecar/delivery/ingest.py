"""What happens to a verified, normalized delivery before Meta gets its answer.

Two implementations of one small interface, chosen by ``delivery.mode``:

* ``SpoolIngest`` (default): commit the events to the spool (group commit), wake the
  delivery worker, answer.  Meta's 200 means "durably stored".
* ``DirectIngest``: forward synchronously; Meta's 200 means "the upstream said 2xx".
  The spool file still records delivered ids (dedup) and quarantined changes.

Either raises an ``Unavailable`` error, which the app turns into a 503 so Meta retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sidecar.delivery.upstream import UpstreamClient
from sidecar.metrics import Metrics
from sidecar.normalize import Normalized
from sidecar.spool import Spool, SpoolWriter

__all__ = ["Ingest", "SpoolIngest", "DirectIngest"]


class Ingest(Protocol):
    async def accept(self, normalized: Normalized) -> None: ...

    async def aclose(self) -> None:
        """After the listener drained: finish what was accepted, then release."""
        ...


class SpoolIngest:
    def __init__(self, writer: SpoolWriter, wake: Callable[[], None], metrics: Metrics) -> None:
        """``wake`` starts delivery after a commit: the worker in this process, or a
        ping to the parent's worker (``serve --workers N``)."""
        self._writer = writer
        self._wake = wake
        self._metrics = metrics

    async def accept(self, normalized: Normalized) -> None:
        if not normalized.events and not normalized.quarantined:
            return
        result = await self._writer.add(normalized.events, normalized.quarantined)
        # Only non-zero increments: each one is a locked write with --workers N.
        if result.duplicates:
            self._metrics.events_duplicate.inc(result.duplicates)
        if result.quarantined:
            self._metrics.events_quarantined.inc(result.quarantined)
        if result.stored:
            self._metrics.events_spooled.inc(len(result.stored))
            self._wake()

    async def aclose(self) -> None:
        await self._writer.aclose()


class DirectIngest:
    def __init__(self, spool: Spool, upstream: UpstreamClient, *, batch_max: int,
                 metrics: Metrics) -> None:
        self._spool = spool
        self._upstream = upstream
        self._batch_max = batch_max
        self._metrics = metrics

    async def accept(self, normalized: Normalized) -> None:
        events = normalized.events
        if events:
            received = time.monotonic()
            new_ids = await self._spool.filter_new([e.id for e in events])
            fresh = [e for e in events if e.id in new_ids]
            self._metrics.events_duplicate.inc(len(events) - len(fresh))
            for start in range(0, len(fresh), self._batch_max):
                group = fresh[start:start + self._batch_max]
                await self._upstream.send(group, as_array=self._batch_max > 1)
                latency = time.monotonic() - received
                for _ in group:  # the same histogram as the spool's worker, per event
                    self._metrics.delivery_latency.observe(latency)
            events = fresh
        await self._spool.record_delivered(events, normalized.quarantined)
        self._metrics.events_delivered.inc(len(events))
        self._metrics.events_quarantined.inc(len(normalized.quarantined))

    async def aclose(self) -> None:
        await self._upstream.aclose()
