"""Move spooled events to the upstream: claim → send → ack / retry / dead.

Why it looks like this:

* Claims are leases.  A claimed event is ``in_flight`` until ``lease_until``; if the
  process dies mid-send (SIGKILL, power cut) ``Spool.recover`` puts it back to pending
  at the next start (all of them: one process serves a spool) or lease period, so
  nothing is lost (at-least-once).
* A pipeline, not rounds.  Up to ``max_in_flight`` sends run at once, each carrying up to
  ``batch_max`` events; as soon as one finishes the loop claims more, so one slow send
  does not hold the others back.  ``wake()`` (called after each spool add) starts
  delivery at once.  A claim that empties the spool also reads when the earliest retry
  comes due, and the worker wakes then (the poll interval is only the longest sleep), so
  backoff and its jitter are kept to the millisecond, not rounded up to the next poll.
* Backoff is exponential with "equal jitter" (half fixed, half random), so retries of
  many events spread out without ever retrying sooner than half the nominal delay.
  A ``Retry-After`` from the upstream is a lower bound, capped at ``backoff_max_s``.
* Clock and random source are parameters, so tests compute exact delays.
* SQLite calls run in a thread (``asyncio.to_thread``) and never block the event loop.
  Outcomes of finished sends are not written one by one: they collect in a
  ``Settlement`` and are recorded together with the next claim, in one transaction (a
  commit and a thread hop per delivery cost more than the send).  The worker claims up to
  two rounds of sends ahead into a local queue, so a finished send is followed by the
  next one at once, and the spool is visited when that queue runs low, when many
  outcomes wait, or every ``_SYNC_EVERY_S``.  Two rounds of sends fit well inside a
  lease (at least three upstream timeouts), so a prefetched claim never expires.
  When the last claim emptied the spool (light load: each wake-up brings an event or
  two), the next visit waits until ``_MIN_SYNC_GAP_S`` after the last one, so a trickle
  of commits costs a few transactions per second instead of one per event.  Measured at
  600-700 new connections a second (two ingest processes): the delivering process spent
  0.39 ms of CPU per event with no gap, 0.28-0.34 ms with 5 ms and 0.17-0.19 ms with
  20 ms.  An event that arrives after a quiet spell is claimed at once; only under a
  steady trickle does one wait, at most this long.

Logs carry fixed event names with facts in ``extra``; bodies are never logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable

from sidecar.delivery.upstream import UpstreamClient
from sidecar.errors import SpoolUnavailable, UpstreamUnavailable
from sidecar.metrics import Metrics
from sidecar.spool import Settlement, Spool, SpooledEvent

__all__ = ["DeliveryWorker"]

log = logging.getLogger("sidecar.delivery")

_SYNC_EVERY_S = 0.1  # at most this stale: outcomes recorded, new events claimed
_SYNC_OUTCOMES = 64  # or sooner, once this many outcomes wait
_MIN_SYNC_GAP_S = 0.02  # after a claim that emptied the spool: delivery waits <= 20 ms more
_MIN_IDLE_S = 0.005  # the shortest sleep before a retry comes due (no busy loop on a clock edge)
_MAX_EXPONENT = 62  # 2**62 * any sane initial delay is far past any backoff_max_s


class DeliveryWorker:
    def __init__(
        self,
        spool: Spool,
        upstream: UpstreamClient,
        *,
        batch_max: int,
        max_in_flight: int,
        max_attempts: int,
        max_age_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        poll_interval_s: float = 0.5,
        lease_s: float = 60.0,
        drain_timeout_s: float = 5.0,
    ) -> None:
        if batch_max < 1 or max_in_flight < 1 or max_attempts < 1:
            raise ValueError("batch_max, max_in_flight and max_attempts must be >= 1")
        self._spool = spool
        self._upstream = upstream
        self.batch_max = batch_max
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.max_age_s = max_age_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.drain_timeout_s = drain_timeout_s
        self._metrics = metrics
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sending: dict[asyncio.Task[None], list[str]] = {}
        self._outcomes = Settlement()
        self._queue: collections.deque[SpooledEvent] = collections.deque()
        self._slots = max_in_flight * batch_max
        self._last_sync = 0.0
        self._drained = False  # the last claim got fewer events than it asked for
        self._next_due: float | None = None  # then: when the earliest pending retry is due

    # ------------------------------------------------------------------ public

    def wake(self) -> None:
        """Deliver now rather than at the next poll.  Safe from any thread."""
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self._wakeup.set)
        else:
            self._wakeup.set()

    def next_delay(self, attempts: int, retry_after_s: float | None) -> float:
        """Seconds before the next try after the ``attempts``-th failed one (1-based)."""
        exponent = min(max(attempts, 1) - 1, _MAX_EXPONENT)
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** exponent)
        delay = base / 2 + self._rng.uniform(0, base / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.backoff_max_s))
        return delay

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then finish sends in progress (bounded)."""
        self._loop = asyncio.get_running_loop()
        next_recover = 0.0
        at_start = True  # in_flight rows now are a dead process's claims: requeue them all
        try:
            while not stop.is_set():
                if time.monotonic() >= next_recover:
                    await self._recover(all_leases=at_start)
                    at_start = False
                    next_recover = time.monotonic() + self.lease_s
                if self._needs_sync():
                    self._queue.extend(await self._settle_and_claim(
                        2 * self._slots - len(self._queue)))
                self._start_sends()
                await self._idle(stop, has_free_slot=len(self._sending) < self.max_in_flight)
        finally:
            await self._drain()

    # ------------------------------------------------------------------ loop steps

    async def _recover(self, *, all_leases: bool = False) -> None:
        try:
            n = await asyncio.to_thread(self._spool.recover, all_leases=all_leases)
        except SpoolUnavailable as exc:
            log.error("delivery.spool_error", extra={"op": "recover", "error": str(exc)})
            return
        if n:
            log.warning("delivery.recovered", extra={"events": n})

    def _needs_sync(self) -> bool:
        return (len(self._queue) < self._slots or len(self._outcomes) >= _SYNC_OUTCOMES
                or time.monotonic() - self._last_sync >= _SYNC_EVERY_S)

    def _start_sends(self) -> None:
        while self._queue and len(self._sending) < self.max_in_flight:
            group = [self._queue.popleft()
                     for _ in range(min(self.batch_max, len(self._queue)))]
            self._start_send(group)

    async def _settle_and_claim(self, limit: int) -> list[SpooledEvent]:
        """Record finished sends and claim up to ``limit`` more: one transaction.

        If the spool fails, the outcomes are lost with it; their leases expire and the
        events are sent again (at-least-once), so nothing is lost."""
        if self._drained and (limit > 0 or self._outcomes):
            gap = self._last_sync + _MIN_SYNC_GAP_S - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)  # let a trickle of new events gather
        outcomes, self._outcomes = self._outcomes, Settlement()
        self._last_sync = time.monotonic()
        if limit <= 0 and not outcomes:
            return []
        self._wakeup.clear()  # anything added from here on wakes the next idle
        try:
            # The spool-depth gauge is refreshed on each /metrics scrape, not here.
            claimed, self._next_due = await asyncio.to_thread(
                self._claim, outcomes, max(0, limit))
        except SpoolUnavailable as exc:
            log.error("delivery.spool_error", extra={"op": "claim", "error": str(exc)})
            return []
        self._drained = len(claimed) < limit
        return claimed

    def _claim(self, outcomes: Settlement, limit: int) -> tuple[list[SpooledEvent], float | None]:
        """In a worker thread: settle and claim; when that emptied the spool of due
        events, also when the next one comes due."""
        claimed = self._spool.settle_and_claim(outcomes, limit, lease_s=self.lease_s)
        if len(claimed) >= limit:
            return claimed, None  # more may be due now: the loop comes back at once
        try:
            return claimed, self._spool.next_due()
        except SpoolUnavailable:
            return claimed, None  # the claim stands; the poll interval finds the retries

    async def _idle(self, stop: asyncio.Event, *, has_free_slot: bool) -> None:
        """Wait for a stop, a send to finish, the next retry coming due, the poll interval
        or (with a free slot) a wake-up.  A claim that filled every slot waits for a send
        to finish."""
        waiters = {asyncio.ensure_future(stop.wait())}
        if has_free_slot:
            waiters.add(asyncio.ensure_future(self._wakeup.wait()))
        timeout = self.poll_interval_s
        if self._next_due is not None:
            until_due = self._next_due - self._clock()
            if until_due > 0:  # past it, the next claim (once there is room) finds it
                timeout = min(timeout, max(_MIN_IDLE_S, until_due))
        try:
            await asyncio.wait(waiters | set(self._sending), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _start_send(self, group: list[SpooledEvent]) -> None:
        task = asyncio.create_task(self._deliver(group))
        self._sending[task] = [s.id for s in group]
        task.add_done_callback(self._sending.pop)

    async def _drain(self) -> None:
        """Let sends in progress finish (bounded); give the rest of their events (and the
        prefetched ones) back; record every outcome."""
        self._give_back_queue()
        if self._sending:
            tasks = set(self._sending)
            try:
                _, still = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
            except asyncio.CancelledError:
                still = {t for t in tasks if not t.done()}
                self._abandon(still)
                self._flush_outcomes()
                raise
            self._abandon(still)
        self._flush_outcomes()

    def _give_back_queue(self) -> None:
        ids = [s.id for s in self._queue]
        self._queue.clear()
        if not ids:
            return
        try:  # at shutdown; a short blocking call is fine here
            self._spool.release(ids)
        except SpoolUnavailable as exc:  # the lease expires and recover() requeues them
            log.error("delivery.spool_error", extra={"op": "release", "error": str(exc)})

    def _flush_outcomes(self) -> None:
        outcomes, self._outcomes = self._outcomes, Settlement()
        if not outcomes:
            return
        try:  # at shutdown; a short blocking call is fine here
            self._spool.settle(outcomes)
        except SpoolUnavailable as exc:  # leases expire; the events are sent again
            log.error("delivery.spool_error", extra={"op": "settle", "error": str(exc)})

    def _abandon(self, tasks: set[asyncio.Task[None]]) -> None:
        ids = [i for t in tasks for i in self._sending.get(t, [])]
        for task in tasks:
            task.cancel()
        if not ids:
            return
        log.warning("delivery.abandoned", extra={"events": len(ids)})
        try:  # at shutdown; a short blocking call is fine here
            self._spool.release(ids)
        except SpoolUnavailable as exc:  # the lease expires and recover() requeues them
            log.error("delivery.spool_error", extra={"op": "release", "error": str(exc)})

    # ------------------------------------------------------------------ one send

    async def _deliver(self, group: list[SpooledEvent]) -> None:
        started = time.monotonic()
        try:
            await self._upstream.send_encoded([s.id for s in group], [s.body for s in group],
                                              as_array=self.batch_max > 1)
        except UpstreamUnavailable as exc:
            self._metrics.upstream_request_seconds.observe(time.monotonic() - started)
            self._failed(group, exc)
            return
        except Exception as exc:  # a bug must cost an attempt, not strand the events
            log.exception("delivery.send_error", extra={"events": len(group)})
            self._failed(group, UpstreamUnavailable(f"send failed: {type(exc).__name__}"))
            return
        self._metrics.upstream_request_seconds.observe(time.monotonic() - started)
        self._delivered(group)

    def _delivered(self, group: list[SpooledEvent]) -> None:
        self._outcomes.delivered.extend(s.id for s in group)
        now = self._clock()
        self._metrics.events_delivered.inc(len(group))
        for s in group:
            self._metrics.delivery_latency.observe(max(0.0, now - s.received_at))

    def _failed(self, group: list[SpooledEvent], exc: UpstreamUnavailable) -> None:
        now = self._clock()
        error = str(exc)
        for s in group:
            attempt = s.attempts + 1
            if attempt >= self.max_attempts or now - s.received_at >= self.max_age_s:
                self._outcomes.dead.append((s.id, error))
                self._metrics.events_dead.inc()
                log.error("delivery.dead", extra={
                    "event_id": s.id, "attempt": attempt, "status": exc.status,
                    "error": error})
                continue
            delay = self.next_delay(attempt, exc.retry_after_s)
            self._outcomes.retry.append((s.id, now + delay, error))
            self._metrics.events_retried.inc()
            log.warning("delivery.retry", extra={
                "event_id": s.id, "attempt": attempt, "status": exc.status,
                "delay_s": round(delay, 3), "error": error})


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
