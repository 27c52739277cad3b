"""The delivery worker against a real spool file and a real UpstreamClient over the
shipped ``MockTransport``, with a manual clock and a seeded random source.  The spool is
seeded and inspected through its blocking SQLite store; the worker uses the contract."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.clock import SYSTEM_CLOCK, ManualClock
from sidecar.delivery.retry import RetryPolicy
from sidecar.delivery.transport import MockTransport, UpstreamRequest, UpstreamResponse
from sidecar.delivery.upstream import UpstreamClient
from sidecar.delivery.worker import DeliveryWorker, WorkerSettings
from sidecar.errors import SpoolUnavailable, UpstreamUnavailable
from sidecar.events import Event
from sidecar.metrics import Metrics
from sidecar.spool import Settlement, SpooledEvent, SQLiteSpool

T0 = 1_800_000_000.0
SEED = 7


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

    async def __call__(self, request: UpstreamRequest) -> UpstreamResponse:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.blocked:
                await self.release.wait()
            await asyncio.sleep(self.delay_s)
            self.bodies.append(request.json())
            status = self.statuses.pop(0) if self.statuses else 200
            return UpstreamResponse(status, self.headers if status >= 300 else {})
        finally:
            self.active -= 1


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def spool(tmp_path: Path, clock: ManualClock):  # type: ignore[no-untyped-def]
    s = SQLiteSpool(tmp_path / "spool.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


_POLICY_KEYS = ("max_attempts", "max_age_s", "backoff_initial_s", "backoff_max_s")


def make_worker(spool: SQLiteSpool, upstream: Callable[[UpstreamRequest],
                                                       Awaitable[UpstreamResponse]],
                metrics: Metrics, clock: ManualClock, **overrides: float) -> tuple[DeliveryWorker,
                                                                              UpstreamClient]:
    client = UpstreamClient("http://upstream.test/events", timeout_s=5, signing_secret=None,
                            transport=MockTransport(upstream), clock=clock)
    policy: dict[str, float] = dict(max_attempts=5, max_age_s=3600, backoff_initial_s=1.0,
                                    backoff_max_s=300.0)
    settings: dict[str, float] = dict(batch_max=1, max_in_flight=1, poll_interval_s=0.01)
    for key, value in overrides.items():
        (policy if key in _POLICY_KEYS else settings)[key] = value
    worker = DeliveryWorker(spool, client, policy=RetryPolicy(**policy),  # type: ignore[arg-type]
                            settings=WorkerSettings(**settings),  # type: ignore[arg-type]
                            metrics=metrics, clock=clock, rng=random.Random(SEED))
    return worker, client


def claim(spool: SQLiteSpool, limit: int) -> list[SpooledEvent]:
    return spool.store.settle_and_claim(Settlement(), limit, lease_s=30)


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


def expected_delay(attempt: int, *, initial: float = 1.0, maximum: float = 300.0) -> float:
    """The delay of the worker's first retry: its random source is seeded with SEED."""
    policy = RetryPolicy(backoff_initial_s=initial, backoff_max_s=maximum)
    return policy.next_delay(attempt, None, jitter=random.Random(SEED).random())


def pending_row(spool: SQLiteSpool, event_id: str):  # type: ignore[no-untyped-def]
    return next(r for r in spool.admin.list_events() if r.id == event_id)


# ---------------------------------------------------------------- outcomes

def test_delivers_and_acks(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    upstream = Upstream()
    spool.store.add_many([([make_event(1)], [])])
    clock.now += 2.5
    worker, client = make_worker(spool, upstream, metrics, clock)

    async def delivered() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 1)

    asyncio.run(run_until(worker, client, delivered))
    assert upstream.bodies == [make_event(1).to_dict()]  # one object, not an array
    assert sample(metrics, "sidecar_events_delivered_total") == 1
    assert sample(metrics, "sidecar_delivery_latency_seconds_sum") == 2.5
    assert sample(metrics, "sidecar_spool_depth") in (0, 1)


def test_500_then_200_is_delivered_after_the_computed_delay(spool: SQLiteSpool, metrics: Metrics,
                                                            clock: ManualClock) -> None:
    upstream = Upstream([500])
    spool.store.add_many([([make_event(1)], [])])
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
        await wait_until(lambda: spool.admin.stats().delivered == 1)

    asyncio.run(run_until(worker, client, failed_once, delivered))
    assert len(upstream.bodies) == 2
    assert sample(metrics, "sidecar_events_retried_total") == 1
    assert sample(metrics, "sidecar_events_delivered_total") == 1


def test_retry_after_is_honoured(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    upstream = Upstream([503], headers={"retry-after": "120"})
    spool.store.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        assert pending_row(spool, "evt_1").next_attempt_at == T0 + 120

    asyncio.run(run_until(worker, client, failed_once))


def test_max_attempts_moves_to_dead(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock,
                                    caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream([500, 502])
    spool.store.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, max_attempts=2)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        clock.now += 10

    async def dead() -> None:
        await wait_until(lambda: spool.admin.stats().dead == 1)

    with caplog.at_level("INFO", logger="sidecar.delivery"):
        asyncio.run(run_until(worker, client, failed_once, dead))
    (row,) = spool.admin.list_events(state="dead")
    assert (row.attempts, row.last_error) == (2, "upstream answered 502")
    assert sample(metrics, "sidecar_events_dead_total") == 1
    assert sample(metrics, "sidecar_events_retried_total") == 1
    records = {r.getMessage(): r for r in caplog.records}
    assert records["delivery.dead"].event_id == "evt_1"  # type: ignore[attr-defined]
    assert records["delivery.retry"].attempt == 1  # type: ignore[attr-defined]
    assert "n" not in records["delivery.dead"].__dict__  # no body in the log


def test_max_age_moves_to_dead(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    upstream = Upstream([500])
    spool.store.add_many([([make_event(1)], [])])
    clock.now += 11
    worker, client = make_worker(spool, upstream, metrics, clock, max_age_s=10)

    async def dead() -> None:
        await wait_until(lambda: spool.admin.stats().dead == 1)

    asyncio.run(run_until(worker, client, dead))
    assert spool.admin.list_events(state="dead")[0].attempts == 1


def test_transport_error_is_retried(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    async def refuse(request: UpstreamRequest) -> UpstreamResponse:
        raise UpstreamUnavailable("upstream unreachable: ConnectionRefusedError")

    spool.store.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, refuse, metrics, clock)

    async def failed_once() -> None:
        await wait_until(lambda: pending_row(spool, "evt_1").attempts == 1)
        assert "unreachable" in (pending_row(spool, "evt_1").last_error or "")

    asyncio.run(run_until(worker, client, failed_once))


# ---------------------------------------------------------------- batching, concurrency

def test_batch_max_sends_arrays(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    upstream = Upstream()
    spool.store.add_many([([make_event(i) for i in range(5)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, batch_max=2)

    async def delivered() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 5)

    asyncio.run(run_until(worker, client, delivered))
    assert all(isinstance(body, list) for body in upstream.bodies)
    assert sorted(len(b) for b in upstream.bodies) == [1, 2, 2]  # type: ignore[arg-type]
    ids = [e["id"] for body in upstream.bodies for e in body]  # type: ignore[attr-defined]
    assert sorted(ids) == [f"evt_{i}" for i in range(5)]


def test_failed_batch_retries_every_event_in_it(spool: SQLiteSpool, metrics: Metrics,
                                                clock: ManualClock) -> None:
    upstream = Upstream([500])
    spool.store.add_many([([make_event(1), make_event(2)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, batch_max=2)

    async def failed_once() -> None:
        await wait_until(lambda: all(r.attempts == 1 for r in spool.admin.list_events()))

    asyncio.run(run_until(worker, client, failed_once))
    assert sample(metrics, "sidecar_events_retried_total") == 2


def test_never_more_than_max_in_flight_concurrent_sends(spool: SQLiteSpool, metrics: Metrics,
                                                        clock: ManualClock) -> None:
    upstream = Upstream(delay_s=0.02)
    spool.store.add_many([([make_event(i) for i in range(20)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, max_in_flight=3)

    async def delivered() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 20)

    asyncio.run(run_until(worker, client, delivered))
    assert upstream.max_active == 3
    assert len(upstream.bodies) == 20


# ---------------------------------------------------------------- wake, recover, stop

def test_wake_starts_delivery_without_waiting_for_the_poll(spool: SQLiteSpool, metrics: Metrics,
                                                           clock: ManualClock) -> None:
    upstream = Upstream()
    worker, client = make_worker(spool, upstream, metrics, clock, poll_interval_s=30)

    async def add_and_wake() -> None:
        await asyncio.sleep(0.05)  # the worker is idle, polling every 30 s
        await asyncio.to_thread(spool.store.add_many, [([make_event(1)], [])])
        worker.wake()
        await wait_until(lambda: spool.admin.stats().delivered == 1, timeout_s=2)

    asyncio.run(run_until(worker, client, add_and_wake))


def test_a_trickle_of_wakeups_after_the_spool_emptied_shares_claims(
        spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    upstream = Upstream()
    worker, client = make_worker(spool, upstream, metrics, clock, poll_interval_s=30,
                                 max_in_flight=8)
    original = spool.settle_and_claim
    claims: list[int] = []

    async def counting(settlement: Settlement, limit: int, *,
                       lease_s: float) -> list[SpooledEvent]:
        claimed = await original(settlement, limit, lease_s=lease_s)
        claims.append(len(claimed))
        return claimed

    spool.settle_and_claim = counting  # type: ignore[method-assign]

    async def trickle() -> None:
        await wait_until(lambda: len(claims) >= 1)  # the first visit found the spool empty
        for n in range(20):  # one commit and one wake-up at a time, as a light load does
            spool.store.add_many([([make_event(n)], [])])
            worker.wake()
            await asyncio.sleep(0.001)
        await wait_until(lambda: spool.admin.stats().delivered == 20, timeout_s=2)

    asyncio.run(run_until(worker, client, trickle))
    assert sum(claims) == 20
    assert len([n for n in claims if n]) < 14, claims  # shared, not one per wake-up


def test_a_retry_is_sent_when_it_comes_due_not_at_the_next_poll(tmp_path: Path,
                                                                  metrics: Metrics) -> None:
    # The real clock: what counts is the wall-clock wait between the two attempts.
    spool = SQLiteSpool(tmp_path / "real-clock.db")
    upstream = Upstream([503])
    worker, client = make_worker(spool, upstream, metrics, SYSTEM_CLOCK,
                                 poll_interval_s=30, backoff_initial_s=0.2)
    spool.store.add_many([([make_event(1)], [])])
    sent: list[float] = []
    original = client.send_encoded

    async def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(time.monotonic())
        return await original(*args, **kwargs)

    client.send_encoded = timed  # type: ignore[method-assign]

    async def retried() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 1, timeout_s=3)

    try:
        asyncio.run(run_until(worker, client, retried))
    finally:
        spool.close()
    # Equal jitter on 0.2 s: 0.1-0.2 s later (plus the worker's 20 ms gathering gap), not
    # at the next 30 s poll.
    assert len(sent) == 2 and 0.1 <= sent[1] - sent[0] < 1.0, sent


def test_run_recovers_events_left_in_flight_by_a_crash(spool: SQLiteSpool, metrics: Metrics,
                                                       clock: ManualClock) -> None:
    upstream = Upstream()
    spool.store.add_many([([make_event(1)], [])])
    claim(spool, 1)  # a previous process claimed it and died
    clock.now += 31
    worker, client = make_worker(spool, upstream, metrics, clock)

    async def delivered() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 1)

    asyncio.run(run_until(worker, client, delivered))


def test_stop_finishes_sends_in_progress(spool: SQLiteSpool, metrics: Metrics, clock: ManualClock) -> None:
    upstream = Upstream(delay_s=0.1)
    spool.store.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, drain_timeout_s=5)

    async def sending() -> None:
        await wait_until(lambda: upstream.active == 1)

    asyncio.run(run_until(worker, client, sending))
    assert spool.admin.stats().delivered == 1


def test_stop_gives_back_sends_that_do_not_finish(spool: SQLiteSpool, metrics: Metrics,
                                                  clock: ManualClock) -> None:
    upstream = Upstream()
    upstream.blocked = True
    spool.store.add_many([([make_event(1)], [])])
    worker, client = make_worker(spool, upstream, metrics, clock, drain_timeout_s=0.05)

    async def sending() -> None:
        await wait_until(lambda: upstream.active == 1)

    asyncio.run(run_until(worker, client, sending))
    stats = spool.admin.stats()
    assert (stats.pending, stats.in_flight, stats.delivered) == (1, 0, 0)
    assert spool.admin.list_events()[0].attempts == 0


# ---------------------------------------------------------------- spool faults


class Faulty:
    """The real spool, with its next ``settle_and_claim`` calls failing as told."""

    def __init__(self, spool: SQLiteSpool, *failures: BaseException) -> None:
        self._spool = spool
        self.failures = list(failures)
        self.settled: list[Settlement] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._spool, name)

    async def settle_and_claim(self, settlement: Settlement, limit: int, *,
                               lease_s: float) -> list[SpooledEvent]:
        if self.failures and (len(settlement) or not isinstance(self.failures[0],
                                                                SpoolUnavailable)):
            raise self.failures.pop(0)
        return await self._spool.settle_and_claim(settlement, limit, lease_s=lease_s)


def test_outcomes_survive_a_failed_spool_write(spool: SQLiteSpool, metrics: Metrics,
                                               clock: ManualClock) -> None:
    # The write that records a 2xx fails once (a database blip): the outcome is kept
    # and recorded by the next visit, not dropped to be resent after the lease.
    upstream = Upstream()
    spool.store.add_many([([make_event(1)], [])])
    faulty = Faulty(spool, SpoolUnavailable("spool unavailable (blip)"))
    worker, client = make_worker(faulty, upstream, metrics, clock)  # type: ignore[arg-type]

    async def delivered() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 1)

    asyncio.run(run_until(worker, client, delivered))
    assert faulty.failures == [] and len(upstream.bodies) == 1


def test_an_unexpected_error_does_not_end_delivery(spool: SQLiteSpool, metrics: Metrics,
                                                   clock: ManualClock,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream()
    spool.store.add_many([([make_event(1)], [])])
    faulty = Faulty(spool, RuntimeError("a bug"), KeyError("part_x"))
    worker, client = make_worker(faulty, upstream, metrics, clock)  # type: ignore[arg-type]

    async def delivered() -> None:
        await wait_until(lambda: spool.admin.stats().delivered == 1)

    asyncio.run(run_until(worker, client, delivered))
    assert faulty.failures == []
    logged = [r for r in caplog.records if r.getMessage() == "delivery.unexpected_error"]
    assert len(logged) == 1  # throttled: the second within the interval is counted, not logged
