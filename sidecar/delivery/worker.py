"""Move spooled events to the upstream: claim → send → settle (delivered, retry, dead).

Why it looks like this:

* Claims are leases.  A claimed event is in flight until its lease ends; if the process
  dies mid-send (SIGKILL, power cut) ``Spool.recover`` gives it back at the next start,
  or (any replica's worker, on a shared spool) within a few seconds of the lease's end,
  so nothing is lost (at-least-once).
* A pipeline, not rounds.  Up to ``max_in_flight`` sends run at once, each carrying up to
  ``batch_max`` events; as soon as one finishes the loop claims more, so one slow send
  does not hold the others back.  ``wake()`` (called after each spool add) starts
  delivery at once; a claim that empties the spool also reads when the earliest retry
  comes due, and the worker wakes then (the poll interval is only the longest sleep).
* Outcomes are not written one by one: they collect in a ``Settlement`` and are recorded
  with the next claim, in one transaction.  The worker claims up to two rounds of sends
  ahead, so a finished send is followed by the next one at once, and visits the spool
  when that queue runs low, when many outcomes wait, or every ``_SYNC_EVERY_S``.  Two
  rounds fit well inside a lease (at least four upstream timeouts).  After a claim that
  emptied the spool, the next visit waits until ``_MIN_SYNC_GAP_S`` after the last one,
  so a trickle of commits costs a few transactions a second, not one per event
  (bench/RESULTS.md).
* When to retry and when to give up is the ``RetryPolicy``'s; the clock and the random
  source are parameters, so tests compute exact delays.

Logs carry fixed event names with facts in ``extra``; bodies are never logged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass

from sidecar.clock import SYSTEM_CLOCK, Clock, wait_for_event
from sidecar.delivery.retry import RetryPolicy
from sidecar.delivery.upstream import UpstreamClient
from sidecar.errors import SpoolUnavailable, UpstreamUnavailable
from sidecar.logs import Throttle
from sidecar.metrics import Metrics
from sidecar.spool import Settlement, Spool, SpooledEvent

__all__ = ["DeliveryWorker", "WorkerSettings"]

log = logging.getLogger("sidecar.delivery")

_SYNC_EVERY_S = 0.1  # at most this stale: outcomes recorded, new events claimed
_SYNC_OUTCOMES = 64  # or sooner, once this many outcomes wait
_MIN_SYNC_GAP_S = 0.02  # after a claim that emptied the spool: delivery waits <= 20 ms more
_MIN_IDLE_S = 0.005  # the shortest sleep before a retry comes due (no busy loop on a clock edge)
SPOOL_ERROR_LOG_INTERVAL_S = 10.0
# Expired leases are looked for this often (one indexed update): on a shared spool, the
# claims of a replica that died are delivered by another within lease + this.
_RECOVER_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the worker paces itself (``upstream.batch_max``, ``upstream.max_in_flight``)."""

    batch_max: int = 1
    max_in_flight: int = 32
    lease_s: float = 60.0  # an in-flight claim outlives any single send
    poll_interval_s: float = 0.5  # the longest sleep without a wake-up
    drain_timeout_s: float = 5.0  # at stop, how long sends in progress may finish

    def __post_init__(self) -> None:
        if self.batch_max < 1 or self.max_in_flight < 1:
            raise ValueError("batch_max and max_in_flight must be at least 1.")


class DeliveryWorker:
    def __init__(self, spool: Spool, upstream: UpstreamClient, *, policy: RetryPolicy,
                 settings: WorkerSettings, metrics: Metrics, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None) -> None:
        self._spool = spool
        self._upstream = upstream
        self.policy = policy
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sending: dict[asyncio.Task[None], list[str]] = {}
        self._outcomes = Settlement()
        self._queue: collections.deque[SpooledEvent] = collections.deque()
        self._slots = settings.max_in_flight * settings.batch_max
        self._last_sync = 0.0
        self._drained = False  # the last claim got fewer events than it asked for
        self._next_due: float | None = None  # then: when the earliest pending retry is due
        # A spool outage fails every poll; say so once per interval per operation.
        self._spool_errors = Throttle(SPOOL_ERROR_LOG_INTERVAL_S)

    # ------------------------------------------------------------------ public

    def wake(self) -> None:
        """Deliver now rather than at the next poll.  Safe from any thread."""
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self._wakeup.set)
        else:
            self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then finish sends in progress (bounded)."""
        self._loop = asyncio.get_running_loop()
        next_recover = 0.0
        at_start = True
        try:
            while not stop.is_set():
                try:
                    if self._clock.monotonic() >= next_recover:
                        await self._recover(at_start=at_start)
                        at_start = False
                        next_recover = self._clock.monotonic() + min(self.settings.lease_s,
                                                                     _RECOVER_EVERY_S)
                    if self._needs_sync():
                        self._queue.extend(await self._settle_and_claim(
                            2 * self._slots - len(self._queue)))
                    self._start_sends()
                    await self._idle(stop, has_free_slot=len(self._sending)
                                     < self.settings.max_in_flight)
                except Exception:
                    # A bug or a driver error the spool did not translate must not end
                    # delivery for good: say so (throttled), pause, go on.  Claims made
                    # before it are sent again after their lease.
                    left_out = self._spool_errors.allow("unexpected")
                    if left_out is not None:
                        log.exception("delivery.unexpected_error",
                                      extra={"similar_left_out": left_out})
                    await wait_for_event(stop, self.settings.poll_interval_s)
        finally:
            await self._drain()

    # ------------------------------------------------------------------ loop steps

    async def _recover(self, *, at_start: bool) -> None:
        try:
            n = await self._spool.recover(at_start=at_start)
        except SpoolUnavailable as exc:
            self._spool_error("recover", exc)
            return
        if n:
            log.warning("delivery.recovered", extra={"events": n})

    def _needs_sync(self) -> bool:
        return (len(self._queue) < self._slots or len(self._outcomes) >= _SYNC_OUTCOMES
                or self._clock.monotonic() - self._last_sync >= _SYNC_EVERY_S)

    def _start_sends(self) -> None:
        batch_max = self.settings.batch_max
        while self._queue and len(self._sending) < self.settings.max_in_flight:
            group = [self._queue.popleft() for _ in range(min(batch_max, len(self._queue)))]
            self._start_send(group)

    async def _settle_and_claim(self, limit: int) -> list[SpooledEvent]:
        """Record finished sends and claim up to ``limit`` more: one transaction.

        If the spool fails, the outcomes are kept for the next visit (recording one twice
        changes nothing: each update requires the lease it ends); should the process
        die first, the leases expire and the events are sent again (at-least-once)."""
        if self._drained and (limit > 0 or self._outcomes):
            gap = self._last_sync + _MIN_SYNC_GAP_S - self._clock.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)  # let a trickle of new events gather
        outcomes, self._outcomes = self._outcomes, Settlement()
        self._last_sync = self._clock.monotonic()
        if limit <= 0 and not outcomes:
            return []
        self._wakeup.clear()  # anything added from here on wakes the next idle
        limit = max(0, limit)
        try:
            claimed = await self._spool.settle_and_claim(outcomes, limit,
                                                         lease_s=self.settings.lease_s)
        except SpoolUnavailable as exc:
            outcomes.extend(self._outcomes)
            self._outcomes = outcomes
            self._spool_error("claim", exc)
            return []
        self._drained = len(claimed) < limit
        self._next_due = None
        if self._drained:  # the spool had no more due: when does the next retry come due?
            try:
                self._next_due = await self._spool.next_due()
            except SpoolUnavailable:
                pass  # the claim stands; the poll interval finds the retries
        return claimed

    async def _idle(self, stop: asyncio.Event, *, has_free_slot: bool) -> None:
        """Wait for a stop, a send to finish, the next retry coming due, the poll interval
        or (with a free slot) a wake-up.  A claim that filled every slot waits for a send
        to finish."""
        waiters = {asyncio.ensure_future(stop.wait())}
        if has_free_slot:
            waiters.add(asyncio.ensure_future(self._wakeup.wait()))
        timeout = self.settings.poll_interval_s
        if self._next_due is not None:
            until_due = self._next_due - self._clock.time()
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
        queued = [s.id for s in self._queue]
        self._queue.clear()
        await self._give_back(queued)
        if self._sending:
            tasks = set(self._sending)
            try:
                _, still = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
            except asyncio.CancelledError:
                still = {t for t in tasks if not t.done()}
                await asyncio.shield(self._abandon(still))
                await asyncio.shield(self._flush_outcomes())
                raise
            await self._abandon(still)
        await self._flush_outcomes()

    async def _give_back(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self._spool.release(ids)
        except SpoolUnavailable as exc:  # the lease expires and recover() requeues them
            self._spool_error("release", exc)

    async def _flush_outcomes(self) -> None:
        outcomes, self._outcomes = self._outcomes, Settlement()
        if not outcomes:
            return
        try:
            await self._spool.settle(outcomes)
        except SpoolUnavailable as exc:  # leases expire; the events are sent again
            self._spool_error("settle", exc)

    async def _abandon(self, tasks: set[asyncio.Task[None]]) -> None:
        ids = [i for t in tasks for i in self._sending.get(t, [])]
        for task in tasks:
            task.cancel()
        if ids:
            log.warning("delivery.abandoned", extra={"events": len(ids)})
            await self._give_back(ids)

    def _spool_error(self, op: str, exc: SpoolUnavailable) -> None:
        left_out = self._spool_errors.allow(op)
        if left_out is not None:
            log.error("delivery.spool_error", extra={"op": op, "error": str(exc),
                                                      "similar_left_out": left_out})

    # ------------------------------------------------------------------ one send

    async def _deliver(self, group: list[SpooledEvent]) -> None:
        started = self._clock.monotonic()
        try:
            await self._upstream.send_encoded([s.id for s in group], [s.body for s in group],
                                              as_array=self.settings.batch_max > 1)
        except UpstreamUnavailable as exc:
            self._metrics.upstream_request_seconds.observe(self._clock.monotonic() - started)
            self._failed(group, exc)
            return
        except Exception as exc:  # a bug must cost an attempt, not strand the events
            log.exception("delivery.send_error", extra={"events": len(group)})
            self._failed(group, UpstreamUnavailable(f"send failed: {type(exc).__name__}"))
            return
        self._metrics.upstream_request_seconds.observe(self._clock.monotonic() - started)
        self._delivered(group)

    def _delivered(self, group: list[SpooledEvent]) -> None:
        self._outcomes.delivered.extend(s.id for s in group)
        now = self._clock.time()
        self._metrics.events_delivered.inc(len(group))
        for s in group:
            self._metrics.delivery_latency.observe(max(0.0, now - s.received_at))

    def _failed(self, group: list[SpooledEvent], exc: UpstreamUnavailable) -> None:
        now = self._clock.time()
        error = str(exc)
        for s in group:
            attempt = s.attempts + 1
            if self.policy.is_dead(attempt, now - s.received_at):
                self._outcomes.dead.append((s.id, error))
                self._metrics.events_dead.inc()
                log.error("delivery.dead", extra={
                    "event_id": s.id, "attempt": attempt, "status": exc.status,
                    "error": error})
                continue
            delay = self.policy.next_delay(attempt, exc.retry_after_s, jitter=self._rng.random())
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
