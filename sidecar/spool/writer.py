"""Group commit in front of any spool: many requests, one durable commit.

Callers enqueue their batch and wait.  One background task takes everything queued so
far, commits it with one ``Spool.add_many`` (one transaction, one fsync) and resolves
every caller's future; whatever arrives during that commit goes into the next one.  So
N requests arriving in the same instant share one fsync instead of queueing behind N of
them.  When the previous commit carried ``commit_window_min_group`` batches or more
(the process is busy), the next one first waits ``commit_window_s`` for more to join
(PostgreSQL's ``commit_delay`` with its siblings rule: a lone request is never
delayed; the values are measured in bench/RESULTS.md).  A failed commit fails every
caller in it with ``SpoolUnavailable`` (nothing of that group was stored).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sidecar.errors import SpoolUnavailable
from sidecar.events import Event, QuarantinedChange
from sidecar.logs import Throttle
from sidecar.spool.contract import AddResult, Batch, Spool

__all__ = ["SpoolWriter", "ADD_TIMEOUT_S"]

log = logging.getLogger("sidecar.spool")

ADD_TIMEOUT_S = 5.0
COMMIT_WINDOW_S = 0.001
COMMIT_WINDOW_MIN_GROUP = 4
FAILURE_LOG_INTERVAL_S = 10.0


class SpoolWriter:
    def __init__(self, spool: Spool, *, max_group: int = 512,
                 add_timeout_s: float = ADD_TIMEOUT_S,
                 commit_window_s: float = COMMIT_WINDOW_S,
                 commit_window_min_group: int = COMMIT_WINDOW_MIN_GROUP) -> None:
        self._spool = spool
        self._max_group = max_group
        self._add_timeout_s = add_timeout_s
        self._commit_window_s = commit_window_s
        self._commit_window_min_group = commit_window_min_group
        self._last_group = 0  # batches in the previous commit
        self._queue: list[tuple[Batch, asyncio.Future[AddResult]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = Throttle(FAILURE_LOG_INTERVAL_S)

    def start(self) -> None:
        """Start the writer task on the running loop (``add`` also starts it lazily)."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="spool-writer")

    async def add(self, events: Sequence[Event],
                  quarantined: Sequence[QuarantinedChange]) -> AddResult:
        if self._closing:
            raise SpoolUnavailable("spool closing")
        self.start()
        assert self._wakeup is not None
        future: asyncio.Future[AddResult] = asyncio.get_running_loop().create_future()
        self._queue.append(((events, quarantined), future))
        self._wakeup.set()
        try:
            # On time-out the batch stays queued and is committed when the spool frees up
            # (the commit skips a future that is already done); this caller just stops
            # waiting (Meta gets 503, retries, and the retry is deduplicated).
            async with asyncio.timeout(self._add_timeout_s):
                return await future
        except TimeoutError:
            raise SpoolUnavailable("spool busy (commit did not finish in time)") from None

    async def aclose(self) -> None:
        """Commit what is queued, then stop.  Later ``add`` calls get SpoolUnavailable."""
        self._closing = True
        if self._task is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        await self._task
        self._task = None

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if (self._last_group >= self._commit_window_min_group
                        and len(self._queue) < self._max_group
                        and not self._closing):
                    # Under concurrent load, let the requests being checked right now
                    # join this commit.
                    await asyncio.sleep(self._commit_window_s)
                group = self._queue[:self._max_group]
                del self._queue[:self._max_group]
                self._last_group = len(group)
                await self._commit(group)
            if self._closing:
                return

    async def _commit(self, group: list[tuple[Batch, asyncio.Future[AddResult]]]) -> None:
        try:
            results = await self._spool.add_many([b for b, _ in group])
        except SpoolUnavailable as exc:
            # Once per interval: an outage fails every request's commit, and the spool
            # logs the outage itself.
            left_out = self._failures.allow("write_failed")
            if left_out is not None:
                log.warning("spool.write_failed", extra={
                    "batches": len(group), "error": str(exc), "similar_left_out": left_out})
            for _, future in group:
                if not future.done():
                    future.set_exception(SpoolUnavailable(str(exc)))
            return
        except Exception:
            log.exception("spool.write_error", extra={"batches": len(group)})
            for _, future in group:
                if not future.done():
                    future.set_exception(SpoolUnavailable("spool write failed"))
            return
        for (_, future), result in zip(group, results):
            if not future.done():  # the caller may have gone away (client disconnected)
                future.set_result(result)
