"""Purge on the PostgreSQL spool (blocking; ``PostgresSpool`` runs it in a thread):
delivered events, dead letters and quarantined changes past their time, tombstones past
the dedup window, and shared parts no event refers to any more.

Safe from any replica or the CLI while replicas serve: every step is a chunk of at most
``PURGE_CHUNK`` rows in a short transaction of its own, so ingest never waits behind a
long one, and each chunk skips rows another session holds (``for update skip locked``:
two replicas purging at once share the work and never wait for each other).

Shared parts (``schema.py``) belong to the batch that stored them.  The chunk that
deletes events also deletes the parts of their batches when no other event of those
batches is left.  Two purges removing a batch's last events at the same instant each
still see the other's, and keep the parts; so does an ``ADD`` that replaces a stale row.
The sweep that ends every purge of events deletes such orphans.  It cannot race an
``ADD``: a batch's parts are committed in the same statement as its events, so a sweep
sees either both or neither.
"""

from __future__ import annotations

from sidecar.spool.contract import PurgeResult
from sidecar.spool.postgres.database import Database

__all__ = ["PostgresPurge", "PURGE_CHUNK"]

PURGE_CHUNK = 2000


def _purge_events(selected: str) -> str:
    """The chunk statement for events matching ``selected`` ($1 the time before which
    they go).  $2 chunk $3 dedup cutoff: rows still inside their dedup window become
    tombstones (body and parts dropped); older ones go."""
    return f"""
with victims as (
    select id, batch from events where {selected}
     limit $2::integer for update skip locked
),
-- "= any(array(...))": a primary-key lookup per victim, where a join may scan the table.
tombstoned as (
    update events e set state = 'purged', own = null, holes = null, batch = null,
           last_error = null
     where e.id = any(array(select id from victims)) and e.created_at >= $3::float8
    returning e.id
),
deleted as (
    delete from events e
     where e.id = any(array(select id from victims)) and e.created_at < $3::float8
    returning e.id
),
freed as (
    delete from parts p
     where p.batch = any(array(select distinct batch from victims where batch is not null))
       and not exists (select 1 from events e
                        where e.batch = p.batch
                          and not exists (select 1 from victims v where v.id = e.id))
)
select (select count(*) from tombstoned) + (select count(*) from deleted)
"""


_PURGE_DELIVERED = _purge_events("state = 'delivered' and delivered_at < $1::float8")
_PURGE_DEAD = _purge_events(
    "state = 'dead' and coalesce(replayed_at, received_at) < $1::float8")

# $1 before $2 chunk
_PURGE_QUARANTINED = """
delete from quarantine where id in (
    select id from quarantine where coalesce(replayed_at, received_at) < $1::float8
     limit $2::integer for update skip locked)
"""

# $1 dedup cutoff $2 chunk
_EXPIRE_TOMBSTONES = """
delete from events where id in (
    select id from events where state = 'purged' and created_at < $1::float8
     limit $2::integer for update skip locked)
"""

# $1 chunk.  Parts whose batch has no event left.
_SWEEP_PARTS = """
delete from parts where (batch, id) in (
    select p.batch, p.id from parts p
     where not exists (select 1 from events e where e.batch = p.batch)
     limit $1::integer for update skip locked)
"""


class PostgresPurge:
    def __init__(self, db: Database) -> None:
        self.db = db

    def purge(self, *, delivered_before: float | None = None,
              dead_before: float | None = None,
              quarantined_before: float | None = None) -> PurgeResult:
        """Delete what the contract says (``Spool.purge``).  A deleted event id still
        inside its dedup window keeps a tombstone until the window ends; tombstones past
        it, and orphaned parts, go whenever events are purged.  Dead letters and
        quarantined changes are aged from receipt or their last replay.  The database
        gives the space of deleted rows back to its own free space (autovacuum), which
        later rows reuse."""
        cutoff = self.db.now() - self.db.dedup_retention_s
        delivered = dead = quarantined = 0
        if delivered_before is not None:
            delivered = self._chunks(_PURGE_DELIVERED, delivered_before, PURGE_CHUNK, cutoff)
        if dead_before is not None:
            dead = self._chunks(_PURGE_DEAD, dead_before, PURGE_CHUNK, cutoff)
        if quarantined_before is not None:
            quarantined = self._chunks(_PURGE_QUARANTINED, quarantined_before, PURGE_CHUNK)
        if delivered_before is not None or dead_before is not None:
            self._chunks(_EXPIRE_TOMBSTONES, cutoff, PURGE_CHUNK)
            self.sweep_parts()
        return PurgeResult(delivered=delivered, dead=dead, quarantined=quarantined)

    def sweep_parts(self) -> int:
        """Delete parts no event refers to any more; how many."""
        return self._chunks(_SWEEP_PARTS, PURGE_CHUNK)

    def _chunks(self, statement: str, *args: object) -> int:
        """Run ``statement`` (a chunk of ``PURGE_CHUNK`` rows at most) until a chunk is
        short; the rows it deleted in all."""
        done = 0
        while True:
            with self.db.tx(durable=False) as conn:
                cur = conn.execute(statement, args)
                row = cur.fetchone() if cur.description else None
                n = int(row[0]) if row is not None else cur.rowcount
            done += n
            if n < PURGE_CHUNK:
                return done
