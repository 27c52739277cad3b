"""The PostgreSQL spool's tables, and the statements that bring a database to each version.

``events`` is the queue and the dedup record at once: the event id is the primary key,
so every replica's insert of the same id meets the same row.  A delivered event or dead
letter that is purged before its dedup window ends stays as a *tombstone* (state
``purged``, body dropped) until the window ends; a row or tombstone past the window no
longer blocks a repeat and is replaced by it.  ``quarantine`` keeps changes that could
not become events.

``spool_counts`` holds the number of events per state, kept by statement-level triggers
(one counter update per statement, whatever its row count) so that ``max_spool_events``,
``/metrics`` and ``spool stats`` cost O(1) on a spool of millions of rows.  The counters
are sharded: each session adds to the rows of its own shard (its backend PID modulo
``COUNT_SHARDS``), and a reader sums the shards.  With one row per state, every ingest
commit of every replica would queue on that row's lock until the previous commit's WAL
flush, which undoes group commit across connections (bench/RESULTS.md).

Version 2 stores what events of one change share once (``spool.parts``).  An event's
``own`` column (``body`` in version 1) holds its own part; ``holes`` says where the
shared parts go (null: ``own`` is the whole event, as in every version-1 row), and
``batch`` names the ``ADD`` that stored it.  ``parts`` rows are keyed by (batch, part
id): each statement stores its events' shared parts under a batch id of its own, in the
same statement as the events.  No part row is shared between statements, so no commit
of any replica updates a row another commit wrote (no reference count to queue on, the
reason the counters are sharded), and a part row can only be orphaned, never needed
again, once no event of its batch is left: the purge that drops a batch's last event
deletes its parts, and every purge of events ends with a sweep for parts a concurrent
purge or a replaced stale row left behind (``purge.py``).  ``body`` is renamed so that a running
version-1 replica, whose statements would send an own part without its shared parts,
fails (``SpoolUnavailable``, Meta retries) instead, until it is replaced.

Times are Unix seconds (``double precision``) from the sidecar's clock, as in the SQLite
spool: replicas' clocks must be in sync (NTP) to a small fraction of the lease.

``schema_version`` holds one row.  The migration runs under a transaction-level advisory
lock, so replicas starting at once take turns; a version newer than this code knows is
refused rather than guessed at.  A released version's statements never change: a later
change is a new version.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "STATES", "COUNT_SHARDS", "MIGRATION_LOCK", "V1_DDL", "V2_DDL",
           "SCHEMA_TABLE"]

SCHEMA_VERSION = 2
STATES = ("pending", "in_flight", "delivered", "dead")
COUNT_SHARDS = 64
# pg_advisory_xact_lock key: "sidecar spool migration" (any constant; shared by replicas)
MIGRATION_LOCK = 0x51DECA5_0001
SCHEMA_TABLE = "sidecar_schema_version"

_COUNT_FUNCTION = """
create or replace function sidecar_count_events() returns trigger
language plpgsql as $fn$
declare
    my_shard smallint := pg_backend_pid() % {shards};
begin
    -- Per state, rows that entered it minus rows that left it in this statement.
    if tg_op = 'INSERT' then
        update spool_counts c set n = c.n + d.k
          from (select state, count(*) as k from new_rows group by state) d
         where c.shard = my_shard and c.state = d.state;
    elsif tg_op = 'DELETE' then
        update spool_counts c set n = c.n - d.k
          from (select state, count(*) as k from old_rows group by state) d
         where c.shard = my_shard and c.state = d.state;
    else
        update spool_counts c set n = c.n + d.k
          from (select state, sum(k) as k
                  from (select state, 1 as k from new_rows
                        union all select state, -1 from old_rows) moved
                 group by state having sum(k) <> 0) d
         where c.shard = my_shard and c.state = d.state;
    end if;
    return null;
end
$fn$
""".format(shards=COUNT_SHARDS)

# Version 1, each statement idempotent.
V1_DDL = (
    "create sequence if not exists events_seq",
    """create table if not exists events (
        id text primary key,
        body bytea,
        state text not null check (state in
            ('pending', 'in_flight', 'delivered', 'dead', 'purged')),
        attempts integer not null default 0,
        received_at double precision not null,
        next_attempt_at double precision,
        lease_until double precision,
        lease_owner uuid,
        last_error text,
        delivered_at double precision,
        created_at double precision not null,
        replayed_at double precision,
        seq bigint not null default nextval('events_seq')
    )""",
    # Claims (oldest due first), next_due, recover, purge, listings, the oldest age:
    # partial indexes, each as small as the state it serves.
    "create index if not exists events_due on events (next_attempt_at, seq)"
    " where state = 'pending'",
    "create index if not exists events_leases on events (lease_until)"
    " where state = 'in_flight'",
    "create index if not exists events_undelivered on events (received_at)"
    " where state in ('pending', 'in_flight')",
    "create index if not exists events_delivered on events (delivered_at)"
    " where state = 'delivered'",
    "create index if not exists events_dead on events (received_at, seq)"
    " where state = 'dead'",
    "create index if not exists events_purged on events (created_at)"
    " where state = 'purged'",
    "create index if not exists events_by_seq on events (seq)",
    """create table if not exists quarantine (
        id text primary key,
        waba_id text not null,
        field text not null,
        entry_time bigint,
        reason text not null,
        value text not null,
        received_at double precision not null,
        replayed_at double precision,
        seq bigint generated always as identity
    )""",
    "create index if not exists quarantine_received on quarantine (received_at, seq)",
    "create index if not exists quarantine_waiting on quarantine (received_at)"
    " where replayed_at is null",
    """create table if not exists spool_counts (
        shard smallint not null,
        state text not null,
        n bigint not null default 0,
        primary key (shard, state)
    ) with (fillfactor = 50)""",
    f"""insert into spool_counts (shard, state)
        select s, st from generate_series(0, {COUNT_SHARDS - 1}) s,
             unnest(array['pending', 'in_flight', 'delivered', 'dead', 'purged']) st
        on conflict do nothing""",
    _COUNT_FUNCTION,
    "drop trigger if exists events_count_insert on events",
    "create trigger events_count_insert after insert on events"
    " referencing new table as new_rows for each statement"
    " execute function sidecar_count_events()",
    "drop trigger if exists events_count_update on events",
    "create trigger events_count_update after update on events"
    " referencing old table as old_rows new table as new_rows for each statement"
    " execute function sidecar_count_events()",
    "drop trigger if exists events_count_delete on events",
    "create trigger events_count_delete after delete on events"
    " referencing old table as old_rows for each statement"
    " execute function sidecar_count_events()",
)

# Version 1 -> 2: shared parts stored once per batch.  Adding nullable columns and
# renaming one change the catalog only, whatever the table's size; the indexes are read
# from the table once (while the migration's lock holds its writers back).
V2_DDL = (
    "alter table events rename column body to own",
    "alter table events add column holes text",
    "alter table events add column batch uuid",
    """create table parts (
        batch uuid not null,
        id text not null,
        body bytea not null,
        primary key (batch, id)
    )""",
    # Whether any event of a batch is left (purge, sweep): only events with parts.
    "create index events_batch on events (batch) where batch is not null",
    # Dead letters and quarantined changes are purged by receipt or their last replay.
    "create index events_dead_age on events ((coalesce(replayed_at, received_at)))"
    " where state = 'dead'",
    "create index quarantine_age on quarantine ((coalesce(replayed_at, received_at)))",
)
