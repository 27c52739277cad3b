"""The PostgreSQL spool's counts and listings (blocking; ``PostgresSpool`` runs them in a
thread).  Safe from any replica or the CLI while replicas serve: each is a few short
statements.  Purge is ``purge.py``, replay ``replay.py``.
"""

from __future__ import annotations


from sidecar.spool.contract import QuarantineRow, SpoolRow, SpoolStats
from sidecar.spool.parts import stored_type
from sidecar.spool.postgres import sql
from sidecar.spool.postgres.database import Database
from sidecar.spool.postgres.schema import STATES

__all__ = ["PostgresAdmin"]

_COLUMNS = "id, own, state, attempts, last_error, received_at, next_attempt_at"


class PostgresAdmin:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ inspection

    def stats(self) -> SpoolStats:
        """``disk_full`` is always False here: the spool's storage is the database
        server's, and a server that has run out of space fails the commit itself
        (``SpoolUnavailable``, as for any outage) rather than a guard of ours refusing
        ingest first.  Watching its free space is the database's monitoring's job."""
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
        return [SpoolRow(id=r[0], type=stored_type(r[1]), state=r[2], attempts=r[3],
                         last_error=r[4], received_at=r[5], next_attempt_at=r[6])
                for r in rows]

    def list_quarantined(self, *, limit: int = 100) -> list[QuarantineRow]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "select id, waba_id, field, reason, received_at, replayed_at from quarantine"
                " order by received_at, seq limit $1", (limit,)).fetchall()
        return [QuarantineRow(*r) for r in rows]
