"""The SQLite spool's ingest and delivery operations (blocking; ``SQLiteSpool`` runs
them in a thread).

The ``events`` row is also the dedup record: an id already stored blocks a repeat for
``dedup_retention_s`` (pending, in-flight and dead rows block for as long as they
exist).  A purged delivered row leaves a tombstone in ``seen`` until its window ends.
An event is stored as its own part plus the parts it shares with others, each part once
(``spool.parts``; the ``parts`` table is kept by triggers, ``schema.py``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from sidecar.errors import SpoolUnavailable
from sidecar.events import Event, QuarantinedChange, canonical_json
from sidecar.spool.contract import AddResult, Batch, Settlement, SpooledEvent
from sidecar.spool.parts import (StoredBatch, Unreadable, decode_holes, encode_holes, reassemble,
                                 split_events)
from sidecar.spool.sqlite.database import Database

__all__ = ["SQLiteStore"]


class SQLiteStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ ingest

    def add_many(self, batches: Sequence[Batch]) -> list[AddResult]:
        """Store every batch in ONE transaction (one fsync); dedup by event id.

        Raises ``SpoolUnavailable`` (and stores nothing) when the new events would take
        the depth past ``max_spool_events`` or the database cannot be written.  Repeats
        of stored ids still succeed when the spool is full: they add nothing.
        """
        every = [e for events, _ in batches for e in events]
        encoded = split_events(every)  # before the write lock, which other writers queue on
        now = self.db.now()
        with self.db.tx(durable=True, ingest=True) as conn:
            depth = depth_of(conn)
            inserted = iter(self.insert_events(conn, every, encoded, state="pending", now=now))
            results = []
            for events, quarantined in batches:
                stored = [e.id for e in events if next(inserted)]
                kept = sum(_insert_quarantined(conn, q, now) for q in quarantined)
                results.append(AddResult(stored=stored, duplicates=len(events) - len(stored),
                                         quarantined=kept))
            if depth + sum(len(r.stored) for r in results) > self.db.max_spool_events:
                raise SpoolUnavailable("spool full")
        return results

    def filter_new(self, ids: Sequence[str]) -> set[str]:
        now = self.db.now()
        with self.db.read() as conn:
            blocking = self._stored_status(conn, ids, now)
        return {i for i in ids if not blocking.get(i)}

    def record_delivered(self, events: Sequence[Event],
                         quarantined: Sequence[QuarantinedChange]) -> None:
        encoded = split_events(events)
        now = self.db.now()
        with self.db.tx(durable=True, ingest=True) as conn:
            self.insert_events(conn, events, encoded, state="delivered", now=now)
            for q in quarantined:
                _insert_quarantined(conn, q, now)

    # One statement finds every known id of a commit, instead of one or two selects per
    # event: each statement is a trip through SQLite that lets the GIL go, which the event
    # loop's thread then has to hand back (bench/RESULTS.md).
    _STATUS_SQL = (
        "select id, state, created_at from events where id in (select value from json_each(?1))"
        " union all"
        " select id, null, created_at from seen where id in (select value from json_each(?1))")

    def _stored_status(self, conn: sqlite3.Connection, ids: Sequence[str],
                       now: float) -> dict[str, bool]:
        """For every id already known: True when it blocks a repeat (stored within the
        dedup window: any row not yet delivered, or created inside it), False when only a
        row or tombstone past its retention is left.  Ids never seen are absent."""
        if not ids:
            return {}
        cutoff = now - self.db.dedup_retention_s
        status: dict[str, bool] = {}
        for id_, state, created_at in conn.execute(self._STATUS_SQL, (json.dumps(list(ids)),)):
            if state is not None:  # an events row decides; a tombstone only without one
                status[id_] = state != "delivered" or created_at >= cutoff
            else:
                status.setdefault(id_, created_at >= cutoff)
        return status

    def insert_events(self, conn: sqlite3.Connection, events: Sequence[Event],
                      encoded: StoredBatch, *, state: str, now: float) -> list[bool]:
        """Insert each event (``encoded``: ``split_events(events)``) unless its id is stored
        within the dedup window (or came earlier in ``events``), with the parts the
        inserted ones refer to; per event, True when inserted."""
        status = self._stored_status(conn, [e.id for e in events], now)
        delivered_at = now if state == "delivered" else None
        attempts = 1 if state == "delivered" else 0
        inserted: list[bool] = []
        stale: list[tuple[str]] = []
        rows: list[tuple[object, ...]] = []
        kept: list[int] = []
        for index, (event, body) in enumerate(zip(events, encoded.events, strict=True)):
            known = status.get(event.id)
            if known:
                inserted.append(False)
                continue
            if known is False:  # a row or tombstone past its retention no longer blocks
                stale.append((event.id,))
            status[event.id] = True
            rows.append((event.id, body.own, encode_holes(body.holes), state, attempts, now,
                         now, delivered_at, now))
            kept.append(index)
            inserted.append(True)
        if stale:  # first: deleting a stale row may free a part a new row refers to
            conn.executemany("delete from events where id = ?", stale)
            conn.executemany("delete from seen where id = ?", stale)
        needed = encoded.part_ids(kept)
        if needed:  # before the events: their insert trigger counts the references
            conn.executemany("insert into parts (id, body) values (?, ?) on conflict do nothing",
                             [(part, encoded.parts[part]) for part in sorted(needed)])
        if rows:
            conn.executemany(
                "insert into events (id, body, parts, state, attempts, received_at,"
                " next_attempt_at, delivered_at, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows)
        return inserted

    # ------------------------------------------------------------------ delivery

    def settle_and_claim(self, settlement: Settlement, limit: int, *,
                         lease_s: float) -> list[SpooledEvent]:
        """Record finished sends and claim the next events in one transaction: a busy
        spool pays one commit (and one thread hop) for many deliveries."""
        now = self.db.now()
        with self.db.tx(durable=False) as conn:
            _settle(conn, settlement, now)
            if limit <= 0:
                return []
            rows = conn.execute(
                "select id, body, parts, attempts, coalesce(replayed_at, received_at) from events"
                " where state = 'pending' and next_attempt_at <= ?"
                " order by next_attempt_at, rowid limit ?",
                (now, limit),
            ).fetchall()
            parts = _read_parts(conn, _part_ids(rows))
            claimed: list[SpooledEvent] = []
            unreadable: list[tuple[str, str]] = []
            for id_, own, holes, attempts, received_at in rows:
                try:
                    body = reassemble(own, holes, parts)
                except Unreadable as exc:
                    unreadable.append((id_, str(exc)))
                    continue
                claimed.append(SpooledEvent(id=id_, body=body, attempts=attempts,
                                            received_at=received_at))
            conn.executemany(
                "update events set state = 'in_flight', lease_until = ? where id = ?",
                [(now + lease_s, s.id) for s in claimed],
            )
            if unreadable:
                conn.executemany(
                    "update events set state = 'dead', last_error = ?, next_attempt_at = null"
                    " where id = ?", [(error, id_) for id_, error in unreadable])
        return claimed

    def next_due(self) -> float | None:
        with self.db.read() as conn:
            (due,) = conn.execute(
                "select min(next_attempt_at) from events where state = 'pending'").fetchone()
        return float(due) if due is not None else None

    def settle(self, settlement: Settlement) -> None:
        with self.db.tx(durable=False) as conn:
            _settle(conn, settlement, self.db.now())

    def release(self, ids: Sequence[str]) -> None:
        with self.db.tx(durable=False) as conn:
            conn.executemany(
                "update events set state = 'pending', lease_until = null"
                " where id = ? and state = 'in_flight'",
                [(i,) for i in ids],
            )

    def recover(self, *, at_start: bool = False) -> int:
        """In-flight events whose lease expired (crash, SIGKILL) go back to pending.

        ``at_start`` requeues every in-flight event whatever its lease: at the worker's
        start such claims can only be a dead process's (one ``serve`` per spool file).
        """
        now = self.db.now()
        with self.db.tx(durable=False) as conn:
            cur = conn.execute(
                "update events set state = 'pending', lease_until = null"
                " where state = 'in_flight' and (? or lease_until < ?)",
                (at_start, now),
            )
            return cur.rowcount

    def backlog(self) -> tuple[int, float | None]:
        now = self.db.now()
        with self.db.read() as conn:
            return depth_of(conn), oldest_age(conn, now)


def depth_of(conn: sqlite3.Connection) -> int:
    """Events stored and not yet delivered or dead (pending + in_flight)."""
    row = conn.execute(
        "select coalesce(sum(n), 0) from state_counts where state in ('pending', 'in_flight')"
    ).fetchone()
    return int(row[0])


def oldest_age(conn: sqlite3.Connection, now: float) -> float | None:
    """Seconds since the oldest pending or in-flight event was received (two index
    lookups, whatever the spool's size)."""
    oldest = [conn.execute("select min(received_at) from events where state = ?",
                           (s,)).fetchone()[0] for s in ("pending", "in_flight")]
    known = [t for t in oldest if t is not None]
    return max(0.0, now - min(known)) if known else None


def _part_ids(rows: Sequence[tuple[object, ...]]) -> set[str]:
    """The part ids the claimed rows' holes name (a damaged holes text names none)."""
    ids: set[str] = set()
    for row in rows:
        try:
            ids.update(part for _, part in decode_holes(row[2]))  # type: ignore[arg-type]
        except (ValueError, TypeError):
            pass  # reassemble reports it
    return ids


def _read_parts(conn: sqlite3.Connection, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(conn.execute("select id, body from parts where id in"
                             " (select value from json_each(?))", (json.dumps(sorted(ids)),)))


def _insert_quarantined(conn: sqlite3.Connection, q: QuarantinedChange, now: float) -> int:
    cur = conn.execute(
        "insert or ignore into quarantine (id, waba_id, field, entry_time, reason, value,"
        " received_at) values (?, ?, ?, ?, ?, ?, ?)",
        (q.id, q.waba_id, q.field, q.entry_time, q.reason, canonical_json(q.value), now),
    )
    return cur.rowcount


def _settle(conn: sqlite3.Connection, s: Settlement, now: float) -> None:
    if s.delivered:
        conn.executemany(
            "update events set state = 'delivered', delivered_at = ?, lease_until = null"
            " where id = ? and state != 'delivered'",
            [(now, i) for i in s.delivered],
        )
    if s.retry:
        conn.executemany(
            "update events set state = 'pending', attempts = attempts + 1,"
            " next_attempt_at = ?, last_error = ?, lease_until = null"
            " where id = ? and state = 'in_flight'",
            [(at, error, i) for i, at, error in s.retry],
        )
    if s.dead:
        conn.executemany(
            "update events set state = 'dead', attempts = attempts + 1, last_error = ?,"
            " lease_until = null, next_attempt_at = null"
            " where id = ? and state = 'in_flight'",
            [(error, i) for i, error in s.dead],
        )
