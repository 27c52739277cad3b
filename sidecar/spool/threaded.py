"""The part of the storage contract that a backend on a blocking driver runs as it is:
each operation in a worker thread, so the event loop never waits on the database.

Both backends (SQLite's file, PostgreSQL through psycopg) are blocking; each subclasses
``ThreadedSpool`` and writes out only the operations it treats in its own way (group
commit wake-ups, full-disk draining, replay and purge)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from sidecar.events import Event, QuarantinedChange
from sidecar.spool.contract import QuarantineRow, SpoolRow, SpoolStats

__all__ = ["ThreadedSpool"]


class _Database(Protocol):
    def take_ownership(self) -> None: ...

    def close(self) -> None: ...

    def check_writable(self) -> None: ...


class _Store(Protocol):
    def filter_new(self, ids: Sequence[str]) -> set[str]: ...

    def record_delivered(self, events: Sequence[Event],
                         quarantined: Sequence[QuarantinedChange]) -> None: ...

    def next_due(self) -> float | None: ...

    def backlog(self) -> tuple[int, float | None]: ...


class _Admin(Protocol):
    def stats(self) -> SpoolStats: ...

    def list_events(self, *, state: str | None = None, limit: int = 100) -> list[SpoolRow]: ...

    def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]: ...


class ThreadedSpool:
    db: _Database
    store: _Store
    admin: _Admin

    def take_ownership(self) -> None:
        self.db.take_ownership()

    def close(self) -> None:
        self.db.close()

    async def filter_new(self, ids: Sequence[str]) -> set[str]:
        return await asyncio.to_thread(self.store.filter_new, ids)

    async def record_delivered(self, events: Sequence[Event],
                               quarantined: Sequence[QuarantinedChange]) -> None:
        await asyncio.to_thread(self.store.record_delivered, events, quarantined)

    async def check_writable(self) -> None:
        await asyncio.to_thread(self.db.check_writable)

    async def next_due(self) -> float | None:
        return await asyncio.to_thread(self.store.next_due)

    async def backlog(self) -> tuple[int, float | None]:
        return await asyncio.to_thread(self.store.backlog)

    async def stats(self) -> SpoolStats:
        return await asyncio.to_thread(self.admin.stats)

    async def list_events(self, *, state: str | None = None,
                          limit: int = 100) -> list[SpoolRow]:
        return await asyncio.to_thread(self.admin.list_events, state=state, limit=limit)

    async def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]:
        return await asyncio.to_thread(self.admin.list_quarantined, limit=limit)
