"""The SQLite spool's operator side: counts, listings, replay and purge (blocking;
``SQLiteSpool`` runs them in a thread).  Safe while ``serve`` runs: WAL lets both use
the file, and a replayed event is picked up by the running worker at its next claim."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sidecar.spool.contract import (
    PurgeResult,
    QuarantineRow,
    Renormalize,
    ReplayResult,
    ReplayTally,
    renormalize_stored,
    requeue_refusal,
    SpoolRow,
    SpoolStats,
)
from sidecar.spool.sqlite.database import Database
from sidecar.spool.sqlite.schema import STATES
from sidecar.spool.parts import split_events, stored_type
from sidecar.spool.sqlite.store import SQLiteStore, oldest_age

__all__ = ["SQLiteAdmin"]

_PURGE_CHUNK = 2000


class SQLiteAdmin:
    def __init__(self, db: Database, store: SQLiteStore) -> None:
        self.db = db
        self._store = store

    # ------------------------------------------------------------------ inspection

    def stats(self) -> SpoolStats:
        now = self.db.now()
        with self.db.read() as conn:
            counts = dict(conn.execute("select state, n from state_counts").fetchall())
            (quarantined,) = conn.execute(
                "select count(*) from quarantine where replayed_at is null").fetchone()
            oldest = oldest_age(conn, now)
        return SpoolStats(
            disk_full=self.db.disk_full(),
            pending=counts.get("pending", 0),
            in_flight=counts.get("in_flight", 0),
            delivered=counts.get("delivered", 0),
            dead=counts.get("dead", 0),
            quarantined=quarantined,
            oldest_pending_age_s=oldest,
        )

    def list_events(self, *, state: str | None = None, limit: int = 100) -> list[SpoolRow]:
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        columns = "id, body, state, attempts, last_error, received_at, next_attempt_at"
        with self.db.read() as conn:
            if state is None:
                rows = conn.execute(f"select {columns} from events order by rowid limit ?",
                                    (limit,)).fetchall()
            else:
                rows = conn.execute(f"select {columns} from events where state = ?"
                                    " order by received_at, rowid limit ?",
                                    (state, limit)).fetchall()
        return [SpoolRow(id=r[0], type=stored_type(r[1]), state=r[2], attempts=r[3],
                         last_error=r[4], received_at=r[5], next_attempt_at=r[6])
                for r in rows]

    def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]:
        with self.db.read() as conn:
            rows = conn.execute(
                "select id, waba_id, field, reason, received_at, replayed_at from quarantine"
                " order by received_at, rowid limit ?", (limit,)).fetchall()
        return [QuarantineRow(*r) for r in rows]

    # ------------------------------------------------------------------ replay

    def replay(self, ids: Sequence[str], *, renormalize: Renormalize,
               force: bool = False) -> ReplayResult:
        """Put dead events back on the queue, and re-admit quarantined changes.

        A dead event restarts with 0 attempts, due now, with a fresh age budget.  A
        delivered event is sent again only with ``force``.  A quarantined change becomes
        pending events through ``renormalize`` (dedup applies), then is marked replayed.
        """
        now = self.db.now()
        tally = ReplayTally()
        with self.db.tx(durable=True) as conn:
            for id_ in dict.fromkeys(ids):  # keep order, drop repeats
                row = conn.execute("select state from events where id = ?", (id_,)).fetchone()
                if row is not None:
                    tally.event(id_, _replay_event(conn, id_, row[0], now, force=force))
                else:
                    tally.change(id_, self._replay_quarantined(conn, id_, now, renormalize))
        return tally.result()

    def replay_all_dead(self) -> int:
        now = self.db.now()
        with self.db.tx(durable=True) as conn:
            cur = conn.execute(
                "update events set state = 'pending', attempts = 0, next_attempt_at = ?,"
                " replayed_at = ?, lease_until = null where state = 'dead'",
                (now, now),
            )
            return cur.rowcount

    def _replay_quarantined(self, conn: sqlite3.Connection, id_: str, now: float,
                            renormalize: Renormalize) -> int | str | None:
        """Events added, or why the change still fails, or None if no such change."""
        row = conn.execute(
            "select waba_id, field, entry_time, reason, value, received_at from quarantine"
            " where id = ?", (id_,)).fetchone()
        if row is None:
            return None
        events = renormalize_stored(id_, row, renormalize)
        if isinstance(events, str):
            return events
        added = sum(self._store.insert_events(conn, events, split_events(events),
                                              state="pending", now=now))
        conn.execute("update quarantine set replayed_at = ? where id = ?", (now, id_))
        return added

    # ------------------------------------------------------------------ purge

    def purge(self, *, delivered_before: float | None = None,
              dead_before: float | None = None,
              quarantined_before: float | None = None) -> PurgeResult:
        """Delete what the contract says (``Spool.purge``), in chunks so that ingest waits
        for the write lock at most one chunk long, then give the freed pages back.

        A deleted event id still inside the dedup window keeps a tombstone in ``seen``;
        tombstones past the window are dropped here too.  Dead letters and quarantined
        changes are aged from receipt or their last replay, like an event's age budget.
        """
        delivered = dead = quarantined = 0
        if delivered_before is not None:
            delivered = self._purge_events(
                "state = 'delivered' and delivered_at < ?", delivered_before)
        if dead_before is not None:
            dead = self._purge_events(
                "state = 'dead' and coalesce(replayed_at, received_at) < ?", dead_before)
        if quarantined_before is not None:
            quarantined = self._purge_chunks(
                "delete from quarantine where rowid in (select rowid from quarantine"
                " where coalesce(replayed_at, received_at) < ? limit ?)", quarantined_before)
        if delivered or dead or quarantined:
            self.db.give_back()
        return PurgeResult(delivered=delivered, dead=dead, quarantined=quarantined)

    def _purge_events(self, where: str, before: float) -> int:
        cutoff = self.db.now() - self.db.dedup_retention_s
        purged = 0
        while True:
            with self.db.tx(durable=False) as conn:
                ids = [(row[0],) for row in conn.execute(
                    f"select id from events where {where} limit ?", (before, _PURGE_CHUNK))]
                conn.executemany(
                    "insert or replace into seen (id, created_at) select id, created_at"
                    " from events where id = ? and created_at >= ?",
                    [(i, cutoff) for (i,) in ids])
                conn.executemany("delete from events where id = ?", ids)
                if len(ids) < _PURGE_CHUNK:
                    conn.execute("delete from seen where created_at < ?", (cutoff,))
            purged += len(ids)
            if len(ids) < _PURGE_CHUNK:
                return purged

    def _purge_chunks(self, delete_sql: str, before: float) -> int:
        purged = 0
        while True:
            with self.db.tx(durable=False) as conn:
                n = conn.execute(delete_sql, (before, _PURGE_CHUNK)).rowcount
            purged += n
            if n < _PURGE_CHUNK:
                return purged


def _replay_event(conn: sqlite3.Connection, id_: str, state: str, now: float, *,
                  force: bool) -> str | None:
    """None when requeued, else why not."""
    refusal = requeue_refusal(state, force=force)
    if refusal is not None:
        return refusal
    conn.execute(
        "update events set state = 'pending', attempts = 0, next_attempt_at = ?,"
        " replayed_at = ?, lease_until = null, delivered_at = null where id = ?",
        (now, now, id_),
    )
    return None


