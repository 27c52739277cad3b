"""The embedded spool: one SQLite file in WAL mode, for one machine.

``SQLiteSpool`` is the storage contract (``sidecar.spool.contract``) over a blocking
store: each operation runs in a worker thread, so the event loop never waits on disk.
Several processes may share the file (``serve --workers N``: their commits queue on a
kernel file lock); exactly one delivers from it (``take_ownership``).

    database.py  the connection, transactions, locks, ownership
    disk.py      free space and the reserve: ingest refused before the disk is full
    schema.py    tables and their migration
    store.py     ingest and delivery operations
    admin.py     counts, listings, replay and purge
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.spool.contract import (
    AddResult,
    Batch,
    PurgeResult,
    Renormalize,
    ReplayResult,
    Settlement,
    SpooledEvent,
)
from sidecar.spool.sqlite.admin import SQLiteAdmin
from sidecar.spool.sqlite.database import Database
from sidecar.spool.sqlite.store import SQLiteStore
from sidecar.spool.threaded import ThreadedSpool

__all__ = ["SQLiteSpool"]

T = TypeVar("T")


class SQLiteSpool(ThreadedSpool):
    db: Database
    store: SQLiteStore
    admin: SQLiteAdmin

    def __init__(self, path: Path, *, max_spool_events: int = 1_000_000,
                 dedup_retention_s: float = 604800.0, clock: Clock = SYSTEM_CLOCK,
                 reserve_bytes: int = 64 << 20) -> None:
        """Opens (and creates or migrates) the file; ``SpoolUnavailable`` when it cannot.
        ``reserve_bytes``: disk kept for delivery and purge (``disk.py``)."""
        self.db = Database(path, max_spool_events=max_spool_events,
                           dedup_retention_s=dedup_retention_s, clock=clock,
                           reserve_bytes=reserve_bytes)
        self.store = SQLiteStore(self.db)
        self.admin = SQLiteAdmin(self.db, self.store)

    @property
    def path(self) -> Path:
        return self.db.path

    async def add_many(self, batches: Sequence[Batch]) -> list[AddResult]:
        return await asyncio.to_thread(self.store.add_many, batches)

    async def watch_commits(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        return  # every writer is on this machine and wakes the worker itself

    async def settle_and_claim(self, settlement: Settlement, limit: int, *,
                               lease_s: float) -> list[SpooledEvent]:
        return await self._draining(self._settle_and_claim, settlement, limit, lease_s)

    async def _draining(self, op: Callable[..., T], *args: Any) -> T:
        """A write that drains the spool or frees space: it may use the disk reserve."""
        return await asyncio.to_thread(self.db.with_room, functools.partial(op, *args))

    def _settle_and_claim(self, settlement: Settlement, limit: int,
                          lease_s: float) -> list[SpooledEvent]:
        if not self.db.disk_low:
            return self.store.settle_and_claim(settlement, limit, lease_s=lease_s)
        # On a full disk, one event per transaction: updating a row rewrites all of it,
        # body included, into the WAL, and a transaction of many large events could need
        # more WAL than the reserve holds.  Slower, but the backlog keeps draining.
        for one in _one_by_one(settlement):
            self.store.settle(one)
        claimed: list[SpooledEvent] = []
        while len(claimed) < limit:
            got = self.store.settle_and_claim(Settlement(), 1, lease_s=lease_s)
            if not got:
                break
            claimed += got
        return claimed

    async def settle(self, settlement: Settlement) -> None:
        await self._draining(self._settle_and_claim, settlement, 0, 0.0)

    async def release(self, ids: Sequence[str]) -> None:
        await self._draining(self.store.release, ids)

    async def recover(self, *, at_start: bool = False) -> int:
        return await self._draining(functools.partial(self.store.recover, at_start=at_start))

    async def replay(self, ids: Sequence[str], *, renormalize: Renormalize,
                     force: bool = False) -> ReplayResult:
        return await asyncio.to_thread(self.admin.replay, ids, renormalize=renormalize,
                                       force=force)

    async def replay_all_dead(self) -> int:
        return await self._draining(self.admin.replay_all_dead)

    async def purge(self, *, delivered_before: float | None = None,
                    dead_before: float | None = None,
                    quarantined_before: float | None = None) -> PurgeResult:
        return await self._draining(functools.partial(
            self.admin.purge, delivered_before=delivered_before, dead_before=dead_before,
            quarantined_before=quarantined_before))


def _one_by_one(s: Settlement) -> list[Settlement]:
    return ([Settlement(delivered=[i]) for i in s.delivered]
            + [Settlement(retry=[r]) for r in s.retry]
            + [Settlement(dead=[d]) for d in s.dead])
