"""The shared spool: one PostgreSQL database that every replica stores into and
delivers from (docs/scaling.md).

``PostgresSpool`` is the storage contract (``sidecar.spool.contract``) over a blocking
store on psycopg 3: each operation runs in a worker thread, as the SQLite spool's do,
so the event loop never waits on the network.  Any number of processes on any number
of machines may use one database: the event id is the primary key (dedup across
replicas), claims are leases taken with ``for update skip locked`` (no event sent by
two replicas at once; a dead replica's claims come back when their lease ends), and a
commit on one replica wakes the others' workers (LISTEN/NOTIFY).

Storage running out (the contract's full-disk clause) is the database server's: it
refuses the writes itself, which is an outage here (``SpoolUnavailable``, 503 to Meta)
until it has room again, and ``stats().disk_full`` stays False.  There is no reserve of
ours to drain or purge with, and ``check_writable`` sees a full server only once it
refuses transactions (not while it refuses just to grow a table), so the server's
storage needs the monitoring and headroom a production database has.

    url.py       the URL, its redacted form, connection defaults
    pool.py      connections made on demand, bounded
    database.py  transactions, timeouts, outages, ownership checks
    schema.py    tables, indexes, counters; migrate.py: versioned migration
    sql.py       the statements of the hot path
    store.py     ingest and delivery operations (events stored with shared parts once)
    admin.py     counts, listings; replay.py: replay; purge.py: purge
    notify.py    wake-ups across replicas
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import SpoolUnavailable
from sidecar.secret import Secret
from sidecar.spool.contract import (
    AddResult,
    Batch,
    PurgeResult,
    Renormalize,
    ReplayResult,
    Settlement,
    SpooledEvent,
)
from sidecar.spool.postgres.admin import PostgresAdmin
from sidecar.spool.postgres.database import Database
from sidecar.spool.postgres.notify import Listener, Notifier
from sidecar.spool.postgres.purge import PostgresPurge
from sidecar.spool.postgres.replay import PostgresReplay
from sidecar.spool.postgres.store import PostgresStore
from sidecar.spool.postgres.url import SpoolURL
from sidecar.config.spool_url import redact_url
from sidecar.spool.threaded import ThreadedSpool

__all__ = ["PostgresSpool", "SpoolURL", "redact_url"]

_LISTENER_JOIN_S = 2.0


class PostgresSpool(ThreadedSpool):
    db: Database
    store: PostgresStore
    admin: PostgresAdmin

    def __init__(self, url: Secret | str | SpoolURL, *, max_spool_events: int = 1_000_000,
                 dedup_retention_s: float = 604800.0, clock: Clock = SYSTEM_CLOCK,
                 must_exist: bool = False) -> None:
        """Connects lazily: the first operation creates or migrates the schema
        (``must_exist``: only checks it is there, as the CLI wants); ``take_ownership``
        does it at once."""
        self.db = Database(url if isinstance(url, SpoolURL) else SpoolURL(url),
                           max_spool_events=max_spool_events,
                           dedup_retention_s=dedup_retention_s, clock=clock,
                           must_exist=must_exist)
        self.store = PostgresStore(self.db)
        self.admin = PostgresAdmin(self.db)
        self._replay = PostgresReplay(self.db, self.store)
        self._purge = PostgresPurge(self.db)
        self._notifier = Notifier(self.db)

    def __repr__(self) -> str:
        return f"PostgresSpool({self.db.url.display!r})"

    async def add_many(self, batches: Sequence[Batch]) -> list[AddResult]:
        results = await asyncio.to_thread(self.store.add_many, batches)
        if any(r.stored for r in results):
            self._notifier.poke()
        return results

    async def watch_commits(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        halt = threading.Event()
        thread = threading.Thread(target=Listener(self.db).run, args=(wake, halt),
                                  name="spool-listen", daemon=True)
        thread.start()
        try:
            await stop.wait()
        finally:
            halt.set()
            await asyncio.to_thread(thread.join, _LISTENER_JOIN_S)

    async def settle_and_claim(self, settlement: Settlement, limit: int, *,
                               lease_s: float) -> list[SpooledEvent]:
        return await asyncio.to_thread(self.store.settle_and_claim, settlement, limit,
                                       lease_s=lease_s)

    async def settle(self, settlement: Settlement) -> None:
        await asyncio.to_thread(self.store.settle, settlement)

    async def release(self, ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.store.release, ids)

    async def recover(self, *, at_start: bool = False) -> int:
        return await asyncio.to_thread(self.store.recover, at_start=at_start)

    async def replay(self, ids: Sequence[str], *, renormalize: Renormalize,
                     force: bool = False) -> ReplayResult:
        result = await asyncio.to_thread(self._replay.replay, ids, renormalize=renormalize,
                                         force=force)
        if result.replayed:
            await self._wake_replicas()
        return result

    async def replay_all_dead(self) -> int:
        n = await asyncio.to_thread(self._replay.replay_all_dead)
        if n:
            await self._wake_replicas()
        return n

    async def purge(self, *, delivered_before: float | None = None,
                    dead_before: float | None = None,
                    quarantined_before: float | None = None) -> PurgeResult:
        return await asyncio.to_thread(functools.partial(
            self._purge.purge, delivered_before=delivered_before, dead_before=dead_before,
            quarantined_before=quarantined_before))

    async def _wake_replicas(self) -> None:
        """After a replay (often from the CLI, which exits right after): notify now."""
        try:
            await asyncio.to_thread(self.db.notify)
        except SpoolUnavailable:
            pass  # the workers' poll finds the events anyway
