"""The durable store behind the 200 we answer Meta: one SQLite file.

Why SQLite and why these settings: a delivery is acknowledged to Meta only once its
events are on disk, so every write that backs such an acknowledgement (``add_many``,
``record_delivered``, ``replay``) commits with ``synchronous=FULL`` in WAL mode.  Many
requests share one commit (group commit, see ``sidecar.spool_writer``), so one fsync
covers them all.  Bookkeeping that can safely be redone after a power cut (claim, ack,
retry, dead, recover, purge) commits with ``synchronous=NORMAL``: in WAL mode a later
FULL commit syncs those frames too, and a lost ack only means one more delivery, which
at-least-once allows.

The ``events`` row is also the dedup record: an id already stored blocks a repeat for
``dedup_retention_s`` (pending, in-flight and dead rows block for as long as they
exist).  ``purge`` deletes delivered rows but leaves a tombstone in ``seen`` until the
retention window has passed, so purging never weakens dedup.

Every sqlite3/OS error becomes ``SpoolUnavailable`` (the webhook answers 503 and Meta
retries); a failed transaction is rolled back, so nothing is ever half-written.  One
connection, guarded by a lock, so the object may be used from worker threads.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.errors import SidecarError, SpoolUnavailable
from sidecar.events import Event, canonical_json, encode_event

if TYPE_CHECKING:
    from sidecar.normalize import QuarantinedChange

__all__ = [
    "Spool",
    "SpoolWriter",
    "AddResult",
    "Settlement",
    "SpooledEvent",
    "SpoolStats",
    "SpoolRow",
    "QuarantineRow",
    "ReplayResult",
    "STATES",
]

log = logging.getLogger("sidecar.spool")

STATES = ("pending", "in_flight", "delivered", "dead")


@dataclass(frozen=True, slots=True)
class AddResult:
    stored: list[str]  # ids newly stored, in order
    duplicates: int  # events dropped as repeats of a stored id
    quarantined: int  # quarantined changes newly stored


@dataclass(slots=True)
class Settlement:
    """Outcomes of finished sends, recorded together: delivered ids, retries
    ``(id, next_attempt_at, error)`` and dead letters ``(id, error)``."""

    delivered: list[str] = field(default_factory=list)
    retry: list[tuple[str, float, str]] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.delivered) + len(self.retry) + len(self.dead)


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    id: str
    body: bytes  # the event as stored and sent: ``events.encode_event``
    attempts: int  # failed attempts so far
    received_at: float  # start of the age budget: receipt, or the last replay

    @property
    def event(self) -> Event:
        return Event.from_dict(json.loads(self.body))


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending: int
    in_flight: int
    delivered: int
    dead: int
    quarantined: int  # not yet replayed
    oldest_pending_age_s: float | None  # oldest pending or in-flight event


@dataclass(frozen=True, slots=True)
class SpoolRow:
    id: str
    type: str
    state: str
    attempts: int
    last_error: str | None
    received_at: float
    next_attempt_at: float | None


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    id: str
    waba_id: str
    field: str
    reason: str
    received_at: float
    replayed_at: float | None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[str]  # ids put back on the delivery queue
    not_found: list[str]
    still_invalid: dict[str, str]  # quarantined id -> why it still fails its schema
    skipped: dict[str, str]  # id -> why it was left alone (already pending, delivered, ...)
    events_added: int  # new events from replayed quarantined changes (after dedup)

    @property
    def is_complete(self) -> bool:
        """True when every requested id was replayed."""
        return not (self.not_found or self.still_invalid or self.skipped)


class Spool:
    SCHEMA_VERSION = 1

    PRAGMAS = (
        "pragma journal_mode = wal",
        "pragma synchronous = full",
        "pragma busy_timeout = 5000",
        "pragma foreign_keys = off",
    )

    DDL_EVENTS = """
        create table if not exists events (
            id text primary key,
            body text not null,
            state text not null check (state in ('pending', 'in_flight', 'delivered', 'dead')),
            attempts integer not null default 0,
            received_at real not null,
            next_attempt_at real,
            lease_until real,
            last_error text,
            delivered_at real,
            created_at real not null,
            replayed_at real
        )"""
    DDL_EVENTS_INDEXES = (
        "create index if not exists events_due on events (state, next_attempt_at)",
        "create index if not exists events_received on events (state, received_at)",
        "create index if not exists events_delivered on events (state, delivered_at)",
    )
    DDL_SEEN = """
        create table if not exists seen (
            id text primary key,
            created_at real not null
        )"""
    DDL_SEEN_INDEX = "create index if not exists seen_created on seen (created_at)"
    DDL_QUARANTINE = """
        create table if not exists quarantine (
            id text primary key,
            waba_id text not null,
            field text not null,
            entry_time integer,
            reason text not null,
            value text not null,
            received_at real not null,
            replayed_at real
        )"""
    DDL_QUARANTINE_INDEX = (
        "create index if not exists quarantine_received on quarantine (received_at)"
    )
    # Per-state row counts kept by triggers, so depth() and stats() cost O(1) on a
    # spool of a million rows, also when another process (the CLI) changes the file.
    DDL_COUNTS = """
        create table if not exists state_counts (
            state text primary key,
            n integer not null
        )"""
    DDL_COUNTS_SEED = "insert or ignore into state_counts (state, n) values (?, 0)"
    DDL_TRIGGERS = (
        """create trigger if not exists events_count_insert after insert on events begin
               update state_counts set n = n + 1 where state = new.state;
           end""",
        """create trigger if not exists events_count_delete after delete on events begin
               update state_counts set n = n - 1 where state = old.state;
           end""",
        """create trigger if not exists events_count_update after update of state on events
           when old.state is not new.state begin
               update state_counts set n = n - 1 where state = old.state;
               update state_counts set n = n + 1 where state = new.state;
           end""",
    )

    def __init__(
        self,
        path: Path,
        *,
        max_spool_events: int = 1_000_000,
        dedup_retention_s: float = 604800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_spool_events = max_spool_events
        self.dedup_retention_s = dedup_retention_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sync_full = True
        self._conn = self._open(self.path)
        self._owner_fd: int | None = None
        self._write_fd: int | None = None

    def take_ownership(self) -> None:
        """Become the one process that delivers from this spool, or raise.

        The worker requeues every in-flight claim at start, which is only right if no
        other process is sending from the same file: a second ``serve`` on one spool is
        refused here (an advisory lock, released when the process exits, even on SIGKILL).
        CLI commands (stats, list, replay, purge) never take it and may run alongside.
        """
        fd = self._open_lock_file(".lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolUnavailable(f"spool {self.path} is in use by another sidecar serve "
                                   "process (one process per spool; scale out with one spool "
                                   "per replica)") from exc
        self._owner_fd = fd

    # ------------------------------------------------------------------ connection

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise SpoolUnavailable(f"spool {path}: cannot open ({_reason(exc)})") from exc
        try:
            for pragma in self.PRAGMAS:
                conn.execute(pragma)
            _require_json1(conn, path)
            self._migrate(conn)
        except (sqlite3.Error, SpoolUnavailable) as exc:
            conn.close()
            if isinstance(exc, SpoolUnavailable):
                raise
            raise SpoolUnavailable(f"spool {path}: cannot open ({_reason(exc)})") from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("begin immediate")
        try:
            (version,) = conn.execute("pragma user_version").fetchone()
            if version > self.SCHEMA_VERSION:
                raise SpoolUnavailable(
                    f"spool {self.path}: schema version {version} is newer than this sidecar "
                    f"({self.SCHEMA_VERSION})"
                )
            for ddl in (self.DDL_EVENTS, *self.DDL_EVENTS_INDEXES, self.DDL_SEEN,
                        self.DDL_SEEN_INDEX, self.DDL_QUARANTINE, self.DDL_QUARANTINE_INDEX,
                        self.DDL_COUNTS, *self.DDL_TRIGGERS):
                conn.execute(ddl)
            conn.executemany(self.DDL_COUNTS_SEED, [(s,) for s in STATES])
            if version < self.SCHEMA_VERSION:
                conn.execute(f"pragma user_version = {self.SCHEMA_VERSION}")
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise

    @contextmanager
    def _tx(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """One ``begin immediate`` … ``commit`` under the lock; any failure rolls back.

        ``durable`` picks ``synchronous=FULL`` (an fsync per commit) for writes that back
        a 200 to Meta, ``NORMAL`` for bookkeeping that may be redone after a power cut.

        Writers in *other processes* (``serve --workers N``) queue on an flock first:
        SQLite's own busy handler polls with growing sleeps, which lets one process
        starve another under load; a kernel lock wakes the next writer as soon as the
        lock is free.
        """
        with self._lock, self._writer_lock():
            conn = self._conn
            try:
                if durable != self._sync_full:
                    conn.execute(f"pragma synchronous = {'full' if durable else 'normal'}")
                    self._sync_full = durable
                conn.execute("begin immediate")
            except sqlite3.Error as exc:
                raise SpoolUnavailable(f"spool unavailable ({_reason(exc)})") from exc
            try:
                yield conn
                conn.execute("commit")
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise SpoolUnavailable(f"spool unavailable ({_reason(exc)})") from exc
                raise

    def _open_lock_file(self, suffix: str) -> int:
        lock_path = self.path.with_name(self.path.name + suffix)
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolUnavailable(f"spool {self.path}: cannot create {lock_path} "
                                   f"({_reason(exc)})") from exc

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if self._write_fd is None:
            self._write_fd = self._open_lock_file(".writer")
        # A blocking wait, woken by the kernel the moment the lock is free (polling with
        # sleeps, as SQLite's busy handler does, let one process starve another).  It is
        # bounded where it matters: SpoolWriter.add answers 503 after ADD_TIMEOUT_S, and
        # readiness checks have their own timeout.
        fcntl.flock(self._write_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._write_fd, fcntl.LOCK_UN)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (deferred transaction) under the lock."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("begin")
                try:
                    yield conn
                finally:
                    conn.execute("commit")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise SpoolUnavailable(f"spool unavailable ({_reason(exc)})") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # releases the ownership lock
            self._owner_fd = None
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    # ------------------------------------------------------------------ ingest

    def add_many(
        self, batches: Sequence[tuple[Sequence[Event], Sequence[QuarantinedChange]]]
    ) -> list[AddResult]:
        """Store every batch in ONE transaction (one fsync); dedup by event id.

        Raises ``SpoolUnavailable`` (and stores nothing) when the new events would take
        the depth past ``max_spool_events`` or the database cannot be written.  Repeats
        of stored ids still succeed when the spool is full: they add nothing.
        """
        every = [e for events, _ in batches for e in events]
        bodies = _bodies(every)  # before the write lock, which other writers queue on
        now = self._clock()
        with self._tx(durable=True) as conn:
            depth = self._depth(conn)
            inserted = iter(self._insert_events(conn, every, bodies, state="pending", now=now))
            results = []
            for events, quarantined in batches:
                stored = [e.id for e in events if next(inserted)]
                kept = sum(self._insert_quarantined(conn, q, now) for q in quarantined)
                results.append(AddResult(stored=stored, duplicates=len(events) - len(stored),
                                         quarantined=kept))
            if depth + sum(len(r.stored) for r in results) > self.max_spool_events:
                raise SpoolUnavailable("spool full")
        return results

    def filter_new(self, ids: Sequence[str]) -> set[str]:
        """Direct mode: the ids not yet stored (within the dedup window)."""
        now = self._clock()
        with self._read() as conn:
            blocking = self._stored_status(conn, ids, now)
        return {i for i in ids if not blocking.get(i)}

    def record_delivered(
        self, events: Sequence[Event], quarantined: Sequence[QuarantinedChange]
    ) -> None:
        """Direct mode: keep the ids the upstream accepted (dedup) and the quarantine."""
        bodies = _bodies(events)
        now = self._clock()
        with self._tx(durable=True) as conn:
            self._insert_events(conn, events, bodies, state="delivered", now=now)
            for q in quarantined:
                self._insert_quarantined(conn, q, now)

    # One statement finds every known id of a commit, instead of one or two selects per
    # event: each statement is a trip through SQLite that lets the GIL go, which the event
    # loop's thread then has to hand back.  A durable commit of 16 events measured 585-590
    # us of CPU this way against 644-733 us with a select per event (4 events: 280-291
    # against 299-305 us); the rest is the fsync (~90 us), the JSON bodies (~10 us each)
    # and the inserts with their indexes and trigger.
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
        cutoff = now - self.dedup_retention_s
        status: dict[str, bool] = {}
        for id_, state, created_at in conn.execute(self._STATUS_SQL, (json.dumps(list(ids)),)):
            if state is not None:  # an events row decides; a tombstone only without one
                status[id_] = state != "delivered" or created_at >= cutoff
            else:
                status.setdefault(id_, created_at >= cutoff)
        return status

    def _insert_events(self, conn: sqlite3.Connection, events: Sequence[Event],
                       bodies: Sequence[str], *, state: str, now: float) -> list[bool]:
        """Insert each event (``bodies``: their ``encode_event`` text) unless its id is
        stored within the dedup window (or came earlier in ``events``); per event, True
        when inserted."""
        status = self._stored_status(conn, [e.id for e in events], now)
        delivered_at = now if state == "delivered" else None
        attempts = 1 if state == "delivered" else 0
        inserted: list[bool] = []
        stale: list[tuple[str]] = []
        rows: list[tuple[object, ...]] = []
        for event, body in zip(events, bodies, strict=True):
            known = status.get(event.id)
            if known:
                inserted.append(False)
                continue
            if known is False:  # a row or tombstone past its retention no longer blocks
                stale.append((event.id,))
            status[event.id] = True
            rows.append((event.id, body, state, attempts, now, now, delivered_at, now))
            inserted.append(True)
        if stale:
            conn.executemany("delete from events where id = ?", stale)
            conn.executemany("delete from seen where id = ?", stale)
        if rows:
            conn.executemany(
                "insert into events (id, body, state, attempts, received_at, next_attempt_at,"
                " delivered_at, created_at) values (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return inserted

    @staticmethod
    def _insert_quarantined(conn: sqlite3.Connection, q: QuarantinedChange, now: float) -> int:
        cur = conn.execute(
            "insert or ignore into quarantine (id, waba_id, field, entry_time, reason, value,"
            " received_at) values (?, ?, ?, ?, ?, ?, ?)",
            (q.id, q.waba_id, q.field, q.entry_time, q.reason, canonical_json(q.value), now),
        )
        return cur.rowcount

    # ------------------------------------------------------------------ delivery

    def claim(self, limit: int, *, lease_s: float) -> list[SpooledEvent]:
        """Move up to ``limit`` due pending events, oldest due first, to in_flight."""
        return self.settle_and_claim(Settlement(), limit, lease_s=lease_s)

    def settle_and_claim(self, settlement: Settlement, limit: int, *,
                         lease_s: float) -> list[SpooledEvent]:
        """Record finished sends and claim the next events in one transaction.

        The worker calls this once per turn of its loop, so a busy spool pays one commit
        (and one thread hop) for many deliveries, not one per delivery.
        """
        now = self._clock()
        with self._tx(durable=False) as conn:
            self._settle(conn, settlement, now)
            if limit <= 0:
                return []
            rows = conn.execute(
                "select id, body, attempts, coalesce(replayed_at, received_at) from events"
                " where state = 'pending' and next_attempt_at <= ?"
                " order by next_attempt_at, rowid limit ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "update events set state = 'in_flight', lease_until = ? where id = ?",
                [(now + lease_s, r[0]) for r in rows],
            )
        return [SpooledEvent(id=id_, body=body.encode("utf-8"), attempts=attempts,
                             received_at=received_at)
                for id_, body, attempts, received_at in rows]

    def next_due(self) -> float | None:
        """When the earliest pending event comes due (a retry's next attempt), or None."""
        with self._read() as conn:
            (due,) = conn.execute(
                "select min(next_attempt_at) from events where state = 'pending'").fetchone()
        return float(due) if due is not None else None

    def settle(self, settlement: Settlement) -> None:
        with self._tx(durable=False) as conn:
            self._settle(conn, settlement, self._clock())

    def ack(self, ids: Sequence[str]) -> None:
        self.settle(Settlement(delivered=list(ids)))

    def retry(self, id: str, *, next_attempt_at: float, error: str) -> None:
        self.settle(Settlement(retry=[(id, next_attempt_at, error)]))

    def dead(self, id: str, *, error: str) -> None:
        self.settle(Settlement(dead=[(id, error)]))

    @staticmethod
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

    def release(self, ids: Sequence[str]) -> None:
        """Give in-flight events back (a send was abandoned at shutdown); no attempt counted."""
        with self._tx(durable=False) as conn:
            conn.executemany(
                "update events set state = 'pending', lease_until = null"
                " where id = ? and state = 'in_flight'",
                [(i,) for i in ids],
            )

    def recover(self, *, all_leases: bool = False) -> int:
        """In-flight events whose lease expired (crash, SIGKILL) go back to pending.

        ``all_leases`` requeues every in-flight event whatever its lease: for the worker's
        start, when such claims can only be a dead process's (one ``serve`` per spool).
        """
        now = self._clock()
        with self._tx(durable=False) as conn:
            cur = conn.execute(
                "update events set state = 'pending', lease_until = null"
                " where state = 'in_flight' and (? or lease_until < ?)",
                (all_leases, now),
            )
            return cur.rowcount

    def check_writable(self) -> None:
        """Raise ``SpoolUnavailable`` unless a write commits now (``/readyz``: "spool
        writable").  A read passes on a read-only file, and in WAL mode while another
        writer holds the lock; this takes the same locks as an ingest commit and commits
        a header write (no fsync), so it fails exactly when ingest would."""
        with self._tx(durable=False) as conn:
            conn.execute(f"pragma user_version = {self.SCHEMA_VERSION}")

    # ------------------------------------------------------------------ inspection

    def depth(self) -> int:
        """Events stored and not yet delivered or dead (pending + in_flight)."""
        with self._read() as conn:
            return self._depth(conn)

    def backlog(self) -> tuple[int, float | None]:
        """The depth and the age of its oldest event (None when empty), in one snapshot."""
        now = self._clock()
        with self._read() as conn:
            return self._depth(conn), self._oldest_age(conn, now)

    @staticmethod
    def _oldest_age(conn: sqlite3.Connection, now: float) -> float | None:
        """Seconds since the oldest pending or in-flight event was received (two index
        lookups, whatever the spool's size)."""
        oldest = [conn.execute("select min(received_at) from events where state = ?",
                               (s,)).fetchone()[0] for s in ("pending", "in_flight")]
        known = [t for t in oldest if t is not None]
        return max(0.0, now - min(known)) if known else None

    @staticmethod
    def _depth(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "select coalesce(sum(n), 0) from state_counts where state in ('pending', 'in_flight')"
        ).fetchone()
        return int(row[0])

    def stats(self) -> SpoolStats:
        now = self._clock()
        with self._read() as conn:
            counts = dict(conn.execute("select state, n from state_counts").fetchall())
            (quarantined,) = conn.execute(
                "select count(*) from quarantine where replayed_at is null").fetchone()
            oldest_age = self._oldest_age(conn, now)
        return SpoolStats(
            pending=counts.get("pending", 0),
            in_flight=counts.get("in_flight", 0),
            delivered=counts.get("delivered", 0),
            dead=counts.get("dead", 0),
            quarantined=quarantined,
            oldest_pending_age_s=oldest_age,
        )

    def list_events(self, *, state: str | None = None, limit: int = 100) -> list[SpoolRow]:
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        with self._read() as conn:
            if state is None:
                rows = conn.execute(
                    "select id, body, state, attempts, last_error, received_at, next_attempt_at"
                    " from events order by rowid limit ?", (limit,)).fetchall()
            else:
                rows = conn.execute(
                    "select id, body, state, attempts, last_error, received_at, next_attempt_at"
                    " from events where state = ? order by received_at, rowid limit ?",
                    (state, limit)).fetchall()
        return [SpoolRow(id=r[0], type=_event_type(r[1]), state=r[2], attempts=r[3],
                         last_error=r[4], received_at=r[5], next_attempt_at=r[6])
                for r in rows]

    def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]:
        with self._read() as conn:
            rows = conn.execute(
                "select id, waba_id, field, reason, received_at, replayed_at from quarantine"
                " order by received_at, rowid limit ?", (limit,)).fetchall()
        return [QuarantineRow(*r) for r in rows]

    # ------------------------------------------------------------------ replay, purge

    def replay(self, ids: Sequence[str], *, force: bool = False) -> ReplayResult:
        """Put dead events back on the queue, and re-admit quarantined changes.

        A dead event restarts with 0 attempts, due now, with a fresh age budget.  A
        delivered event is sent again only with ``force``.  A quarantined change is
        re-checked against its schema (skipped with ``force``), normalized and added
        as pending events (dedup applies), then marked replayed.
        """
        now = self._clock()
        replayed: list[str] = []
        not_found: list[str] = []
        still_invalid: dict[str, str] = {}
        skipped: dict[str, str] = {}
        added = 0
        with self._tx(durable=True) as conn:
            for id_ in dict.fromkeys(ids):  # keep order, drop repeats
                row = conn.execute("select state from events where id = ?", (id_,)).fetchone()
                if row is not None:
                    why = self._replay_event(conn, id_, row[0], now, force=force)
                    if why is None:
                        replayed.append(id_)
                    else:
                        skipped[id_] = why
                    continue
                outcome = self._replay_quarantined(conn, id_, now, force=force)
                if outcome is None:
                    not_found.append(id_)
                elif isinstance(outcome, str):
                    still_invalid[id_] = outcome
                else:
                    replayed.append(id_)
                    added += outcome
        return ReplayResult(replayed=replayed, not_found=not_found, still_invalid=still_invalid,
                            skipped=skipped, events_added=added)

    def replay_all_dead(self) -> int:
        now = self._clock()
        with self._tx(durable=True) as conn:
            cur = conn.execute(
                "update events set state = 'pending', attempts = 0, next_attempt_at = ?,"
                " replayed_at = ?, lease_until = null where state = 'dead'",
                (now, now),
            )
            return cur.rowcount

    @staticmethod
    def _replay_event(conn: sqlite3.Connection, id_: str, state: str, now: float, *,
                      force: bool) -> str | None:
        """None when requeued, else why not."""
        if state in ("pending", "in_flight"):
            return f"already {state.replace('_', ' ')}"
        if state == "delivered" and not force:
            return "already delivered (use --force to send it again)"
        conn.execute(
            "update events set state = 'pending', attempts = 0, next_attempt_at = ?,"
            " replayed_at = ?, lease_until = null, delivered_at = null where id = ?",
            (now, now, id_),
        )
        return None

    def _replay_quarantined(self, conn: sqlite3.Connection, id_: str, now: float, *,
                            force: bool) -> int | str | None:
        """Events added, or why the change still fails, or None if no such change."""
        row = conn.execute(
            "select waba_id, field, entry_time, value, received_at from quarantine where id = ?",
            (id_,)).fetchone()
        if row is None:
            return None
        from sidecar.normalize import normalize_change

        waba_id, field, entry_time, value_text, received_at = row
        value = json.loads(value_text)
        try:
            events = normalize_change(
                waba_id, entry_time, field, value,
                received_at=datetime.fromtimestamp(received_at, tz=timezone.utc), force=force,
            )
        except SidecarError as exc:
            return str(exc)
        added = sum(self._insert_events(conn, events, _bodies(events), state="pending",
                                        now=now))
        conn.execute("update quarantine set replayed_at = ? where id = ?", (now, id_))
        return added

    def purge(self, *, delivered_before: float) -> int:
        """Delete delivered rows delivered before the given time; dedup still holds.

        A purged id still inside the dedup window keeps a tombstone in ``seen``;
        tombstones past the window are dropped here too.
        """
        cutoff = self._clock() - self.dedup_retention_s
        purged = 0
        while True:  # in chunks: ingest waits for the write lock at most one chunk long
            with self._tx(durable=False) as conn:
                ids = [(row[0],) for row in conn.execute(
                    "select id from events where state = 'delivered' and delivered_at < ?"
                    " limit ?", (delivered_before, _PURGE_CHUNK))]
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


def _bodies(events: Sequence[Event]) -> list[str]:
    """What the spool stores for each event: the JSON the upstream receives."""
    return [encode_event(e).decode("utf-8") for e in events]


def _require_json1(conn: sqlite3.Connection, path: Path) -> None:
    """The dedup lookup uses ``json_each`` (built into SQLite since 3.38, and compiled in
    by the usual distributions before): say so at start, not at the first commit."""
    try:
        conn.execute("select count(*) from json_each('[]')").fetchone()
    except sqlite3.OperationalError:
        raise SpoolUnavailable(
            f"spool {path}: this Python's SQLite {sqlite3.sqlite_version} has no JSON "
            "functions (json_each); use SQLite 3.38 or newer") from None


_Batch = tuple[Sequence[Event], Sequence["QuarantinedChange"]]
_PURGE_CHUNK = 2000
ADD_TIMEOUT_S = 5.0
# How long a commit waits for more requests when the previous one carried several: a
# commit costs ~150 us of CPU (fsync included) plus ~25 us per event, so under load
# larger groups are cheaper; 1 ms raised two ingest processes' throughput by ~20%
# (bench/RESULTS.md) and adds at most 1 ms to an answer under load, none to a lone one.
COMMIT_WINDOW_S = 0.001
# ... and only once the previous commit carried at least this many requests: the process
# is then busy enough for more to arrive within the window.  With two (the old rule) the
# window also applied at a moderate steady rate, where it bought little and cost a
# millisecond per answer.  Open loop at 1,000 req/s with two ingest processes, four
# back-to-back pairs: p50 2.3-3.3 ms before, 1.6-2.3 after; p99 6.4-14.0 ms before,
# 5.2-9.2 after.  Kept-alive throughput at c=32 (groups of ~13) did not change; a new
# connection per request (groups of ~2.4) lost ~6%, the price of this rule
# (bench/RESULTS.md).
COMMIT_WINDOW_MIN_GROUP = 4


class SpoolWriter:
    """Async front of ``Spool.add_many`` doing group commit.

    Callers enqueue their batch and wait.  One background task takes everything queued
    so far, commits it in one transaction (one fsync) in a worker thread, and resolves
    every caller's future; whatever arrives during that commit goes into the next one.
    So N requests arriving in the same instant share one fsync instead of queueing
    behind N of them.  When the previous commit carried ``commit_window_min_group``
    batches or more (the process is busy), the next one first waits ``commit_window_s``
    for more to join.  A failed commit fails every caller in it with
    ``SpoolUnavailable`` (nothing of that group was stored).
    """

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
        self._queue: list[tuple[_Batch, asyncio.Future[AddResult]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

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
                    # join this commit (PostgreSQL's commit_delay, with its siblings rule:
                    # a lone request is never delayed).
                    await asyncio.sleep(self._commit_window_s)
                group = self._queue[:self._max_group]
                del self._queue[:self._max_group]
                self._last_group = len(group)
                await self._commit(group)
            if self._closing:
                return

    async def _commit(self, group: list[tuple[_Batch, asyncio.Future[AddResult]]]) -> None:
        try:
            results = await asyncio.to_thread(self._spool.add_many, [b for b, _ in group])
        except SpoolUnavailable as exc:
            log.warning("spool.write_failed", extra={"batches": len(group), "error": str(exc)})
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


def _event_type(body: str) -> str:
    try:
        value = json.loads(body).get("type")
    except (ValueError, AttributeError):
        return "?"
    return value if isinstance(value, str) else "?"


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("rollback")
    except sqlite3.Error:
        pass  # no transaction open (sqlite already rolled back on a fatal error)


def _reason(exc: BaseException) -> str:
    """A short, safe description: the sqlite/OS message, without paths or SQL."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
