"""Wake-ups across replicas: ``NOTIFY`` after a commit that stored events, ``LISTEN`` in
every delivering process.  A commit on replica A starts delivery on replica B within a
few milliseconds instead of B's next poll; the poll stays as the fallback, so a lost
notification (a dropped listening connection) only delays delivery, never loses it.

Why the NOTIFY is sent after the add's commit, in a transaction of its own, and not
inside the add: PostgreSQL serialises committing transactions that notified on one
lock held until their commit record is flushed, so a NOTIFY in every durable add would
make every replica's ingest commits wait for each other's disk flush, undoing group
commit.  Sent on its own with ``synchronous_commit = off``, the lock is held for
microseconds; at most one is in flight per process, and later commits coalesce into
the next one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import psycopg

from sidecar.errors import SpoolUnavailable
from sidecar.spool.postgres.database import Database
from sidecar.spool.postgres.pool import Connection
from sidecar.spool.postgres.sql import NOTIFY_CHANNEL

__all__ = ["Notifier", "Listener"]

log = logging.getLogger("sidecar.spool")

# Under load, at most one NOTIFY per process per this long (a lone commit notifies at
# once): the committing process's own worker is woken directly anyway; the others only
# need to learn that there is work, and each wake-up costs every replica a claim.
_NOTIFY_GAP_S = 0.05
_PING_EVERY_S = 15.0  # a listening connection proves it is alive this often
_RETRY_S = (0.05, 5.0)


class Notifier:
    """``poke()`` on the event loop after each commit that stored events."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._running = False
        self._again = False
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spool-notify")

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await asyncio.to_thread(self._db.notify)
                except SpoolUnavailable:
                    pass  # the other replicas' workers poll; ingest already answered
                if not self._again:
                    return
                await asyncio.sleep(_NOTIFY_GAP_S)
        finally:
            self._running = False


class Listener:
    """A dedicated connection that LISTENs and calls ``wake`` for every notification,
    reconnecting (with a growing delay) when it drops; ``wake`` also runs after each
    (re)connect, for what was committed while nobody listened."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def run(self, wake: Callable[[], None], stop: threading.Event) -> None:
        delay = _RETRY_S[0]
        lost = False
        while not stop.is_set():
            try:
                with self._db.connect() as conn:
                    conn.execute(f"listen {NOTIFY_CHANNEL}")
                    if lost:
                        log.warning("spool.listen_resumed", extra={"spool": self._db.url.display})
                        lost = False
                    delay = _RETRY_S[0]
                    wake()
                    self._listen(conn, wake, stop)
            except psycopg.Error as exc:
                if not lost:
                    log.warning("spool.listen_lost", extra={
                        "spool": self._db.url.display, "error": self._db.url.reason(exc)})
                    lost = True
                stop.wait(delay)
                delay = min(delay * 2, _RETRY_S[1])

    def _listen(self, conn: Connection, wake: Callable[[], None],
                stop: threading.Event) -> None:
        pinged = time.monotonic()
        while not stop.is_set():
            # One wake per batch of notifications; back within half a second to see stop.
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                wake()
            if time.monotonic() - pinged >= _PING_EVERY_S:
                conn.execute("select 1")
                pinged = time.monotonic()
