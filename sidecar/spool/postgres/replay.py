"""Replay on the PostgreSQL spool: requeue dead (or, with ``force``, delivered) events and
re-admit quarantined changes, in one durable transaction.  The rows are locked while
they are decided on, so a replay from the CLI and a replica's worker never act on one
event at once; the worker of any replica picks the requeued events up at its next claim.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.spool.contract import (Renormalize, ReplayResult, ReplayTally, renormalize_stored,
                                     requeue_refusal)
from sidecar.spool.postgres.database import Database
from sidecar.spool.postgres.pool import Connection
from sidecar.spool.postgres.store import NO_LIMIT, PostgresStore

__all__ = ["PostgresReplay"]

# $1 now $2 id
_REQUEUE = """
update events set state = 'pending', attempts = 0, next_attempt_at = $1::float8,
       replayed_at = $1::float8, lease_until = null, lease_owner = null, delivered_at = null
 where id = $2::text
"""


class PostgresReplay:
    def __init__(self, db: Database, store: PostgresStore) -> None:
        self.db = db
        self._store = store

    def replay(self, ids: Sequence[str], *, renormalize: Renormalize,
               force: bool = False) -> ReplayResult:
        """A dead event restarts with 0 attempts, due now, with a fresh age budget.  A
        delivered event is sent again only with ``force``.  A quarantined change becomes
        pending events through ``renormalize`` (dedup applies), then is marked replayed.
        """
        now = self.db.now()
        tally = ReplayTally()
        with self.db.tx(durable=True) as conn:
            for id_ in dict.fromkeys(ids):  # keep order, drop repeats
                row = conn.execute("select state from events where id = $1 for update",
                                   (id_,)).fetchone()
                if row is not None and row[0] != "purged":
                    tally.event(id_, _requeue(conn, id_, row[0], now, force=force))
                else:
                    tally.change(id_, self._replay_quarantined(conn, id_, now, renormalize))
        return tally.result()

    def replay_all_dead(self) -> int:
        now = self.db.now()
        with self.db.tx(durable=True) as conn:
            return conn.execute(
                "update events set state = 'pending', attempts = 0, next_attempt_at = $1,"
                " replayed_at = $1, lease_until = null, lease_owner = null"
                " where state = 'dead'", (now,)).rowcount

    def _replay_quarantined(self, conn: Connection, id_: str, now: float,
                            renormalize: Renormalize) -> int | str | None:
        """Events added, or why the change still fails, or None if no such change."""
        row = conn.execute(
            "select waba_id, field, entry_time, reason, value, received_at from quarantine"
            " where id = $1 for update", (id_,)).fetchone()
        if row is None:
            return None
        events = renormalize_stored(id_, row, renormalize)
        if isinstance(events, str):
            return events
        _, stored, _ = self._store.insert(conn, events, [], state="pending",
                                          max_depth=NO_LIMIT)
        conn.execute("update quarantine set replayed_at = $1 where id = $2", (now, id_))
        return len(stored)


def _requeue(conn: Connection, id_: str, state: str, now: float, *,
             force: bool) -> str | None:
    """None when requeued, else why not."""
    refusal = requeue_refusal(state, force=force)
    if refusal is None:
        conn.execute(_REQUEUE, (now, id_))
    return refusal
