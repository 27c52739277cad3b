"""The embedded spool: one SQLite file in WAL mode, for one machine.

``SQLiteSpool`` is the storage contract (``sidecar.spool.contract``) over a blocking
store: each operation runs in a worker thread, so the event loop never waits on disk.
Several processes may share the file (``serve --workers N``: their commits queue on a
kernel file lock); exactly one delivers from it (``take_ownership``).

    database.py  the connection, transactions, locks, ownership
    schema.py    tables and their migration
    store.py     ingest and delivery operations
    admin.py     counts, listings, replay and purge
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.events import Event, QuarantinedChange
from sidecar.spool.contract import (
    AddResult,
    Batch,
    QuarantineRow,
    Renormalize,
    ReplayResult,
    Settlement,
    SpooledEvent,
    SpoolRow,
    SpoolStats,
)
from sidecar.spool.sqlite.admin import SQLiteAdmin
from sidecar.spool.sqlite.database import Database
from sidecar.spool.sqlite.store import SQLiteStore

__all__ = ["SQLiteSpool"]


class SQLiteSpool:
    def __init__(self, path: Path, *, max_spool_events: int = 1_000_000,
                 dedup_retention_s: float = 604800.0, clock: Clock = SYSTEM_CLOCK) -> None:
        """Opens (and creates or migrates) the file; ``SpoolUnavailable`` when it cannot."""
        self.db = Database(path, max_spool_events=max_spool_events,
                           dedup_retention_s=dedup_retention_s, clock=clock)
        self.store = SQLiteStore(self.db)
        self.admin = SQLiteAdmin(self.db, self.store)

    @property
    def path(self) -> Path:
        return self.db.path

    def take_ownership(self) -> None:
        self.db.take_ownership()

    def close(self) -> None:
        self.db.close()

    async def add_many(self, batches: Sequence[Batch]) -> list[AddResult]:
        return await asyncio.to_thread(self.store.add_many, batches)

    async def filter_new(self, ids: Sequence[str]) -> set[str]:
        return await asyncio.to_thread(self.store.filter_new, ids)

    async def record_delivered(self, events: Sequence[Event],
                               quarantined: Sequence[QuarantinedChange]) -> None:
        await asyncio.to_thread(self.store.record_delivered, events, quarantined)

    async def check_writable(self) -> None:
        await asyncio.to_thread(self.db.check_writable)

    async def watch_commits(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        return  # every writer is on this machine and wakes the worker itself

    async def settle_and_claim(self, settlement: Settlement, limit: int, *,
                               lease_s: float) -> list[SpooledEvent]:
        return await asyncio.to_thread(self.store.settle_and_claim, settlement, limit,
                                       lease_s=lease_s)

    async def next_due(self) -> float | None:
        return await asyncio.to_thread(self.store.next_due)

    async def settle(self, settlement: Settlement) -> None:
        await asyncio.to_thread(self.store.settle, settlement)

    async def release(self, ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.store.release, ids)

    async def recover(self, *, at_start: bool = False) -> int:
        return await asyncio.to_thread(self.store.recover, at_start=at_start)

    async def backlog(self) -> tuple[int, float | None]:
        return await asyncio.to_thread(self.store.backlog)

    async def stats(self) -> SpoolStats:
        return await asyncio.to_thread(self.admin.stats)

    async def list_events(self, *, state: str | None = None,
                          limit: int = 100) -> list[SpoolRow]:
        return await asyncio.to_thread(self.admin.list_events, state=state, limit=limit)

    async def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]:
        return await asyncio.to_thread(self.admin.list_quarantined, limit=limit)

    async def replay(self, ids: Sequence[str], *, renormalize: Renormalize,
                     force: bool = False) -> ReplayResult:
        return await asyncio.to_thread(self.admin.replay, ids, renormalize=renormalize,
                                       force=force)

    async def replay_all_dead(self) -> int:
        return await asyncio.to_thread(self.admin.replay_all_dead)

    async def purge(self, *, delivered_before: float) -> int:
        return await asyncio.to_thread(self.admin.purge, delivered_before=delivered_before)
