"""The delivery worker against a real spool file and a real UpstreamClient over a fake
transport (httpx-style handlers), with a fixed clock and a seeded random source."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx
import pytest

from sidecar.delivery.http1 import UpstreamResponse
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.worker import DeliveryWorker
from sidecar.errors import UpstreamUnavailable
from sidecar.events import Event
from sidecar.metrics import Metrics
from sidecar.spool import Spool

T0 = 1_800_000_000.0
SEED = 7


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_event(n: int) -> Event:
    return Event(id=f"evt_{n}", type="whatsapp.account_update", field="account_update",
                 waba_id="waba1", phone_number_id=None, occurred_at="2027-01-15T08:00:00Z",
                 received_at="2027-01-15T08:00:00.000Z", data={"n": n})


class Upstream:
    """Answers from a script of statuses (then 200), recording what it received."""

    def __init__(self, statuses: list[int] | None = None, *, headers: dict[str, str] | None = None,
                 delay_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.headers = headers or {}
        self.delay_s = delay_s
        self.bodies: list[object] = []
        self.active = 0
        self.max_active = 0
        self.release = asyncio.Event()
        self.blocked = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.blocked:
                await self.release.wait()
            await asyncio.sleep(self.delay_s)
            self.bodies.append(json.loads(request.content))
            status = self.statuses.pop(0) if self.statuses else 200
            return httpx.Response(status, headers=self.headers if status >= 300 else {})
        finally:
            self.active -= 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spool(tmp_path: Path, clock: Clock):
    s = Spool(tmp_path / "spool.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


class MockUpstreamTransport:
    """An ``UpstreamTransport`` that hands each request to an httpx-style handler."""

    def __init__(self, handler: Callable[[httpx.Request], object]) -> None:
        self._handler = handler

    async def post(self, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        request = httpx.Request("POST", "http://upstream.test/events", content=body,
                                headers=dict(headers))
        try:
            response = self._handler(request)
            if inspect.isawaitable(response):
                response = await response
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from exc
        assert isinstance(response, httpx.Response)
        return UpstreamResponse(response.status_code,
                                {k.lower(): v for k, v in response.headers.items()})

    async def aclose(self) -> None:
        pass


def make_worker(spool: Spool, upstream: Upstream, metrics: Metrics, clock: Clock,
                **overrides: object) -> tuple[DeliveryWorker, UpstreamClient]:
    client = UpstreamClient("http://upstream.test/events", timeout_s=5, signing_secret=None,
                            transport=MockUpstreamTransport(upstream), clock=clock)
    options: dict[str, object] = dict(
        batch_max=1, max_in_flight=1, max_attempts=5, max_age_s=3600, backoff_initial_s=1.0,
        backoff_max_s=300.0, metrics=metrics, clock=clock, rng=random.Random(SEED),
        poll_interval_s=0.01)
    options.update(overrides)
    return DeliveryWorker(spool, client, **options), client  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


async def run_until(worker: DeliveryWorker, client: UpstreamClient,
                    *steps: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        for step in steps:
            await step()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def expected_delay(attempt: int, *, initial: float = 1.0, maximum: float = 300.0,
                   rng: random.Random | None = None) -> float:
    base = min(maximum, initial * 2 ** (attempt - 1))
    return base / 2 + (rng or random.Random(SEED)).uniform(0, base / 2)


def pending_row(spool: Spool, event_id: str):  # type: ignore[no-untyped-def]
    return next(r for r in spool.list_events() if r.id == event_id)


# ---------------------------------------------------------------- backoff

def test_next_delay_is_exponential_with_equal_jitter(spool: Spool, metrics: Metrics,
                                                     clock: Clock) -> None:
    worker, _ = make_worker(spool, Upstream(), metrics, clock, backoff_initial_s=2.0,
                            backoff_max_s=60.0)
    rng = random.Random(SEED)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (500, 60.0)]:
        delay = worker.next_delay(attempt, None)
        assert delay == base / 2 + rng.uniform(0, base / 2)
        assert base / 2 <= delay <= base


def test_next_delay_honours_retry_after_up_to_the_cap(spool: Spool, metrics: Metrics,
                                                      clock: Clock) -> None:
    worker, _ = make_worker(spool, Upstream(), metrics, clock, backoff_max_s=300.0)
    assert worker.next_delay(1, 120.0) == 120.0
    assert worker.next_delay(1, 10_000.0) == 300.0
    assert worker.next_delay(1, 0.0) < 1.0  # a short Retry-After does not shorten the backoff


# ---------------------------------------------------------------- outcomes

def test_delivers_and_acks(spool: Spool, metrics: Metrics, clock: Clock) -> None:
    upstream = Upstream()
    spool.add_many([([make_event(1)], [])])
    clock.now += 2.5
    worker, client = make_worker(spool, upstream, metrics, clock)

    async def delivered() -> None:
        await wait_until(lambda: spool.stats().delivered == 1)

    asyncio.run(run_until(worker, client, delivered))
    assert upstream.bodies == [make_event(1).to_dict()]  # one object, not an array
    assert sample(metrics, "sidecar_events_delivered_total") == 1
    assert sample(metrics, "sidecar_delivery_latency_seconds_sum") == 2.5
    assert sample(metrics, "sidecar_spool_depth") in (0, 1)


def test_500_then_200_is_delivered_after_the_computed_delay(spool: Spool, metrics: Metrics,
                                                            clock: Clock) -> None:
    upstream = Upstream([500])
    spool.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock)
    delay = expected_delay(1)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        row = pending_row(spool, "evt_1")
        assert (row.state, row.last_error) == ("pending", "upstream answered 500")
        assert row.next_attempt_at == T0 + delay
        await asyncio.sleep(0.05)
        assert len(upstream.bodies) == 1  # not due yet
        clock.now = T0 + delay

    async def delivered() -> None:
        await wait_until(lambda: spool.stats().delivered == 1)

    asyncio.run(run_until(worker, client, failed_once, delivered))
    assert len(upstream.bodies) == 2
    assert sample(metrics, "sidecar_events_retried_total") == 1
    assert sample(metrics, "sidecar_events_delivered_total") == 1


def test_retry_after_is_honoured(spool: Spool, metrics: Metrics, clock: Clock) -> None:
    upstream = Upstream([503], headers={"retry-after": "120"})
    spool.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        assert pending_row(spool, "evt_1").next_attempt_at == T0 + 120

    asyncio.run(run_until(worker, client, failed_once))


def test_max_attempts_moves_to_dead(spool: Spool, metrics: Metrics, clock: Clock,
                                    caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream([500, 502])
    spool.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, max_attempts=2)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        clock.now += 10

    async def dead() -> None:
        await wait_until(lambda: spool.stats().dead == 1)

    with caplog.at_level("INFO", logger="sidecar.delivery"):
        asyncio.run(run_until(worker, client, failed_once, dead))
    (row,) = spool.list_events(state="dead")
    assert (row.attempts, row.last_error) == (2, "upstream answered 502")
    assert sample(metrics, "sidecar_events_dead_total") == 1
    assert sample(metrics, "sidecar_events_retried_total") == 1
    records = {r.getMessage(): r for r in caplog.records}
    assert records["delivery.dead"].event_id == "evt_1"  # type: ignore[attr-defined]
    assert records["delivery.retry"].attempt == 1  # type: ignore[attr-defined]
    assert "n" not in records["delivery.dead"].__dict__  # no body in the log


def test_max_age_moves_to_dead(spool: Spool, metrics: Metrics, clock: Clock) -> None:
    upstream = Upstream([500])
    spool.add_many([([make_event(1)], [])])
    clock.now += 11
    worker, client = make_worker(spool, upstream, metrics, clock, max_age_s=10)

    async def dead() -> None:
        await wait_until(lambda: spool.stats().dead == 1)

    asyncio.run(run_until(worker, client, dead))
    assert spool.list_events(state="dead")[0].attempts == 1


def test_transport_error_is_retried(spool: Spool, metrics: Metrics, clock: Clock) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    spool.add_many([([make_event(1)], [])])
    client = UpstreamClient("http://upstream.test/events", timeout_s=5, signing_secret=None,
                            transport=MockUpstreamTransport(refuse), clock=clock)
    worker = DeliveryWorker(spool, client, batch_max=1, max_in_flight=1, max_attempts=5,
                            max_age_s=3600, backoff_initial_s=1, backoff_max_s=300,
                            metrics=metrics, clock=clock, rng=random.Random(SEED),
                            poll_interval_s=0.01)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        assert "unreachable" in (pending_row(spool, "evt_1").last_error or "")

    asyncio.run(run_until(worker, client, failed_once))


# ---------------------------------------------------------------- batching, concurrency

def test_batch_max_sends_arrays(spool: Spool, metrics: Metrics, clock: Clock) -> None:
    upstream = Upstream()
    spool.add_many([([make_event(i) for i in range(5)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, batch_max=2)

    async def delivered() -> None:
        await wait_until(lambda: spool.stats().delivered == 5)

    asyncio.run(run_until(worker, client, delivered))
    assert all(isinstance(body, list) for body in upstream.bodies)
    assert sorted(len(b) for b in upstream.bodies) == [1, 2, 2]  # type: ignore[arg-type]
    ids = [e["id"] for body in upstream.bodies for e in body]  # type: ignore[attr-defined]
    assert sorted(ids) == [f"evt_{i}" for i in range(5)]


def test_failed_batch_retries_every_event_in_it(spool: Spool, metrics: Metrics,
                                                clock: Clock) -> None:
    upstream = Upstream([500])
    spool.add_many([([make_event(1), make_event(2)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, batch_max=2)

    async def failed_once() -> None:
        await wait_until(lambda: all(r.attempts == 1 for r in spool.list_events()))

    asyncio.run(run_until(worker, client, failed_once))
    assert sample(metrics, "sidecar_events_retried_total") == 2


def test_never_more_than_max_in_flight_concurrent_sends(spool: Spool, metrics: Metrics,
                                                        clock: Clock) -> None:
    upstream = Upstream(delay_s=0.02)
    spool.add_many([([make_event(i) for i in range(20)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, max_in_flight=3)

    async def delivered() -> None:
        await wait_until(lambda: spool.stats().delivered == 20)

    asyncio.run(run_until(worker, client, delivered))
    assert upstream.max_active == 3
    assert len(upstream.bodies) == 20


# ---------------------------------------------------------------- wake, recover, stop

def test_wake_starts_delivery_without_waiting_for_the_poll(spool: Spool, metrics: Metrics,
                                                           clock: Clock) -> None:
    upstream = Upstream()
    worker, client = make_worker(spool, upstream, metrics, clock, poll_interval_s=30)

    async def add_and_wake() -> None:
        await asyncio.sleep(0.05)  # the worker is idle, polling every 30 s
        await asyncio.to_thread(spool.add_many, [([make_event(1)], [])])
        worker.wake()
        await wait_until(lambda: spool.stats().delivered == 1, timeout_s=2)

    asyncio.run(run_until(worker, client, add_and_wake))


def test_a_trickle_of_wakeups_after_the_spool_emptied_shares_claims(
        spool: Spool, metrics: Metrics, clock: Clock) -> None:
    upstream = Upstream()
    worker, client = make_worker(spool, upstream, metrics, clock, poll_interval_s=30,
                                 max_in_flight=8)
    original = spool.settle_and_claim
    claims: list[int] = []

    def counting(settlement, limit, *, lease_s):  # type: ignore[no-untyped-def]
        claimed = original(settlement, limit, lease_s=lease_s)
        claims.append(len(claimed))
        return claimed

    spool.settle_and_claim = counting  # type: ignore[method-assign]

    async def trickle() -> None:
        await wait_until(lambda: len(claims) >= 1)  # the first visit found the spool empty
        for n in range(20):  # one commit and one wake-up at a time, as a light load does
            spool.add_many([([make_event(n)], [])])
            worker.wake()
            await asyncio.sleep(0.001)
        await wait_until(lambda: spool.stats().delivered == 20, timeout_s=2)

    asyncio.run(run_until(worker, client, trickle))
    assert sum(claims) == 20
    assert len([n for n in claims if n]) < 14, claims  # shared, not one per wake-up


def test_a_retry_is_sent_when_it_comes_due_not_at_the_next_poll(tmp_path: Path,
                                                                  metrics: Metrics) -> None:
    # The real clock: what counts is the wall-clock wait between the two attempts.
    spool = Spool(tmp_path / "real-clock.db")
    upstream = Upstream([503])
    worker, client = make_worker(spool, upstream, metrics, time.time,  # type: ignore[arg-type]
                                 poll_interval_s=30, backoff_initial_s=0.2)
    spool.add_many([([make_event(1)], [])])
    sent: list[float] = []
    original = client.send_encoded

    async def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(time.monotonic())
        return await original(*args, **kwargs)

    client.send_encoded = timed  # type: ignore[method-assign]

    async def retried() -> None:
        await wait_until(lambda: spool.stats().delivered == 1, timeout_s=3)

    try:
        asyncio.run(run_until(worker, client, retried))
    finally:
        spool.close()
    # Equal jitter on 0.2 s: 0.1-0.2 s later (plus the worker's 20 ms gathering gap), not
    # at the next 30 s poll.
    assert len(sent) == 2 and 0.1 <= sent[1] - sent[0] < 1.0, sent


def test_run_recovers_events_left_in_flight_by_a_crash(spool: Spool, metrics: Metrics,
                                                       clock: Clock) -> None:
    upstream = Upstream()
    spool.add_many([([make_event(1)], [])])
    spool.claim(1, lease_s=30)  # a previous process claimed it and died
    clock.now += 31
    worker, client = make_worker(spool, upstream, metrics, clock)

    async def delivered() -> None:
        await wait_until(lambda: spool.stats().delivered == 1)

    asyncio.run(run_until(worker, client, delivered))


def test_stop_finishes_sends_in_progress(spool: Spool, metrics: Metrics, clock: Clock) -> None:
    upstream = Upstream(delay_s=0.1)
    spool.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, drain_timeout_s=5)

    async def sending() -> None:
        await wait_until(lambda: upstream.active == 1)

    asyncio.run(run_until(worker, client, sending))
    assert spool.stats().delivered == 1


def test_stop_gives_back_sends_that_do_not_finish(spool: Spool, metrics: Metrics,
                                                  clock: Clock) -> None:
    upstream = Upstream()
    upstream.blocked = True
    spool.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, drain_timeout_s=0.05)

    async def sending() -> None:
        await wait_until(lambda: upstream.active == 1)

    asyncio.run(run_until(worker, client, sending))
    stats = spool.stats()
    assert (stats.pending, stats.in_flight, stats.delivered) == (1, 0, 0)
    assert spool.list_events()[0].attempts == 0
