"""The PostgreSQL spool's counts, listings and purge (blocking; ``PostgresSpool`` runs
them in a thread).  Safe from any replica or the CLI while replicas serve: each is a
few short statements, and purge works in chunks that skip rows another session holds.
"""

from __future__ import annotations

import json

from sidecar.spool.contract import QuarantineRow, SpoolRow, SpoolStats
from sidecar.spool.postgres import sql
from sidecar.spool.postgres.database import Database
from sidecar.spool.postgres.schema import STATES

__all__ = ["PostgresAdmin", "PURGE_CHUNK"]

PURGE_CHUNK = 2000

_COLUMNS = "id, body, state, attempts, last_error, received_at, next_attempt_at"

# $1 delivered before $2 chunk $3 dedup cutoff.  Rows still inside their dedup window
# become tombstones (body dropped); older ones go.
_PURGE_DELIVERED = """
with victims as (
    select id from events where state = 'delivered' and delivered_at < $1::float8
     limit $2::integer for update skip locked
),
tombstoned as (
    update events e set state = 'purged', body = null, last_error = null
      from victims v where e.id = v.id and e.created_at >= $3::float8
    returning e.id
),
deleted as (
    delete from events e using victims v where e.id = v.id and e.created_at < $3::float8
    returning e.id
)
select (select count(*) from tombstoned) + (select count(*) from deleted)
"""

# $1 dedup cutoff $2 chunk
_EXPIRE_TOMBSTONES = """
delete from events where id in (
    select id from events where state = 'purged' and created_at < $1::float8
     limit $2::integer for update skip locked)
"""


class PostgresAdmin:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ inspection

    def stats(self) -> SpoolStats:
        now = self.db.now()
        with self.db.connection() as conn, conn.transaction():
            counts = {state: int(n) for state, n in conn.execute(sql.COUNTS).fetchall()}
            waiting = conn.execute(
                "select count(*) from quarantine where replayed_at is null").fetchone()
            oldest = conn.execute(sql.OLDEST).fetchone()
        assert waiting is not None and oldest is not None
        return SpoolStats(
            pending=counts.get("pending", 0), in_flight=counts.get("in_flight", 0),
            delivered=counts.get("delivered", 0), dead=counts.get("dead", 0),
            quarantined=int(waiting[0]),
            oldest_pending_age_s=None if oldest[0] is None else max(0.0, now - oldest[0]))

    def list_events(self, *, state: str | None = None, limit: int = 100) -> list[SpoolRow]:
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        with self.db.connection() as conn:
            if state is None:
                rows = conn.execute(f"select {_COLUMNS} from events where state <> 'purged'"
                                    " order by seq limit $1", (limit,)).fetchall()
            else:
                rows = conn.execute(f"select {_COLUMNS} from events where state = $1"
                                    " order by received_at, seq limit $2",
                                    (state, limit)).fetchall()
        return [SpoolRow(id=r[0], type=_event_type(r[1]), state=r[2], attempts=r[3],
                         last_error=r[4], received_at=r[5], next_attempt_at=r[6])
                for r in rows]

    def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "select id, waba_id, field, reason, received_at, replayed_at from quarantine"
                " order by received_at, seq limit $1", (limit,)).fetchall()
        return [QuarantineRow(*r) for r in rows]

    # ------------------------------------------------------------------ purge

    def purge(self, *, delivered_before: float) -> int:
        """Delete events delivered before that time; an id still inside its dedup window
        keeps a tombstone until the window ends.  Tombstones past it go too.  In chunks
        of short transactions, so ingest never waits behind a long one."""
        cutoff = self.db.now() - self.db.dedup_retention_s
        purged = 0
        while True:  # each pass removes a chunk or ends the loop
            with self.db.tx(durable=False) as conn:
                row = conn.execute(_PURGE_DELIVERED,
                                   (delivered_before, PURGE_CHUNK, cutoff)).fetchone()
            done = int(row[0]) if row is not None else 0
            purged += done
            if done < PURGE_CHUNK:
                break
        while True:
            with self.db.tx(durable=False) as conn:
                expired = conn.execute(_EXPIRE_TOMBSTONES, (cutoff, PURGE_CHUNK)).rowcount
            if expired < PURGE_CHUNK:
                return purged


def _event_type(body: bytes | None) -> str:
    try:
        value = json.loads(body or b"").get("type")
    except (ValueError, AttributeError):
        return "?"
    return value if isinstance(value, str) else "?"
