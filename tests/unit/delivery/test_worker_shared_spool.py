"""What the worker does differently for a spool shared by replicas: it looks for expired
leases every few seconds (another replica's claims come back within lease + that, not
two leases), and a spool outage is logged once per interval, not at every poll."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from sidecar.delivery.retry import RetryPolicy
from sidecar.delivery.transport import MockTransport, UpstreamRequest, UpstreamResponse
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.worker import DeliveryWorker, WorkerSettings
from sidecar.errors import SpoolUnavailable
from sidecar.metrics import Metrics
from sidecar.spool import Settlement, SpooledEvent


class SteppedClock:
    """Wall and monotonic time moved by hand (the worker's schedule reads ``monotonic``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return 1_800_000_000.0 + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


class CountingSpool:
    """Just enough of a spool: counts recover calls, fails claims when told to."""

    def __init__(self) -> None:
        self.recovers = 0
        self.down = False

    async def recover(self, *, at_start: bool = False) -> int:
        self.recovers += 1
        if self.down:
            raise SpoolUnavailable("spool unavailable (database away)")
        return 0

    async def settle_and_claim(self, settlement: Settlement, limit: int, *,
                               lease_s: float) -> list[SpooledEvent]:
        if self.down:
            raise SpoolUnavailable("spool unavailable (database away)")
        return []

    async def next_due(self) -> float | None:
        return None

    async def release(self, ids: object) -> None: ...

    async def settle(self, settlement: Settlement) -> None: ...


async def ok(request: UpstreamRequest) -> UpstreamResponse:
    return UpstreamResponse(200, {})


def make_worker(spool: CountingSpool, clock: SteppedClock) -> DeliveryWorker:
    client = UpstreamClient("http://upstream.test/events", timeout_s=5, signing_secret=None,
                            transport=MockTransport(ok), clock=clock)
    return DeliveryWorker(spool, client,  # type: ignore[arg-type]
                          policy=RetryPolicy(max_attempts=5, max_age_s=3600,
                                             backoff_initial_s=1.0, backoff_max_s=300.0),
                          settings=WorkerSettings(lease_s=60.0, poll_interval_s=0.01),
                          metrics=Metrics(), clock=clock)


async def run_for(worker: DeliveryWorker, seconds: float, then=None) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(seconds)
    if then is not None:
        then()
        await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_expired_leases_are_looked_for_every_few_seconds_not_every_lease() -> None:
    spool, clock = CountingSpool(), SteppedClock()
    worker = make_worker(spool, clock)

    def six_seconds_later() -> None:
        clock.offset += 6.0  # far less than the 60 s lease

    await run_for(worker, 0.1, six_seconds_later)
    assert spool.recovers == 2


async def test_a_spool_outage_is_logged_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    spool, clock = CountingSpool(), SteppedClock()
    spool.down = True
    caplog.set_level(logging.ERROR, logger="sidecar.delivery")
    await run_for(make_worker(spool, clock), 0.3)  # dozens of polls at 10 ms
    lines = [r for r in caplog.records if r.getMessage() == "delivery.spool_error"]
    assert sorted(r.op for r in lines) == ["claim", "recover"]  # type: ignore[attr-defined]
