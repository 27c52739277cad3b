"""The PostgreSQL spool's statements, in one place (``$n`` parameters).

Each hot-path operation is ONE statement, so one round trip: data-modifying CTEs run in
one snapshot and one implicit transaction, which also makes each of them all-or-nothing.

* ``ADD`` stores a whole group commit: dedup by primary key (``on conflict``: a row or
  tombstone past its dedup window is replaced, anything else is a repeat), the
  ``max_spool_events`` check (nothing is stored when the group does not fit), and the
  quarantined changes.  Two replicas inserting one id at once meet in the unique index:
  the second waits for the first to commit and then sees a repeat.  Rows are inserted
  in id order, so two commits sharing several ids wait in one direction and never
  deadlock; ``seq`` (claim order among events due at once) keeps the arrival order.
* ``SETTLE_AND_CLAIM`` records finished sends, then claims due events oldest-due first
  with ``for update skip locked``, so replicas claiming at once never take the same row
  and never wait for each other.  Retries, dead letters and releases apply only to rows
  this process still holds (``lease_owner``): a replica whose lease ran out while it was
  stalled cannot put back an event another replica has claimed since.

An event is stored as its own part plus the parts it shares (``spool.parts``,
``schema.py``): ``ADD`` inserts the shared parts its stored events refer to under the
statement's batch id, in the same statement (so a part row is never visible without
its events, nor events without their parts), and ``SETTLE_AND_CLAIM`` returns the
claimed events and, after them, each part they refer to once.  The stored form is
written in ``ADD`` only and read in ``SETTLE_AND_CLAIM`` and the listings
(``parts.split_events`` / ``store.spooled``).
"""

from __future__ import annotations

__all__ = [
    "ADD", "SETTLE_AND_CLAIM", "SETTLE", "RELEASE", "RECOVER", "NEXT_DUE", "DEPTH",
    "OLDEST", "COUNTS", "KNOWN", "NOTIFY_CHANNEL",
]

NOTIFY_CHANNEL = "sidecar_spool"

# $1 ids (unique) $2 own parts $3 holes (null: stored whole) $4 now $5 dedup cutoff
# $6 max depth after the add $7 state $8 attempts $9 delivered_at; shared parts: $10 the
# batch id $11 part ids $12 part bodies; quarantine: $13 ids $14 waba $15 field
# $16 entry_time $17 reason $18 value
ADD = """
with input as (
    select u.id, u.own, u.holes, nextval('events_seq') as seq
      from unnest($1::text[], $2::bytea[], $3::text[]) as u(id, own, holes)
),
fresh as (
    select i.id, i.own, i.holes, i.seq from input i left join events e on e.id = i.id
     where e.id is null or (e.state in ('delivered', 'purged') and e.created_at < $5)
),
fits as (
    select (select coalesce(sum(n), 0) from spool_counts
             where state in ('pending', 'in_flight'))
           + (select count(*) from fresh) <= $6::bigint as ok
),
stored as (
    insert into events as e (id, own, holes, batch, state, attempts, received_at,
                             next_attempt_at, delivered_at, created_at, seq)
    select id, own, holes, case when holes is not null then $10::uuid end, $7::text,
           $8::integer, $4::float8, $4::float8, $9::float8, $4::float8, seq
      from fresh where (select ok from fits) order by id
    on conflict (id) do update set
        own = excluded.own, holes = excluded.holes, batch = excluded.batch,
        state = excluded.state, attempts = excluded.attempts,
        received_at = excluded.received_at, next_attempt_at = excluded.next_attempt_at,
        lease_until = null, lease_owner = null, last_error = null,
        delivered_at = excluded.delivered_at, created_at = excluded.created_at,
        replayed_at = null, seq = excluded.seq
     where e.state in ('delivered', 'purged') and e.created_at < $5
    returning e.id, e.holes
),
shared as (
    insert into parts (batch, id, body)
    select $10::uuid, p.id, p.body from unnest($11::text[], $12::bytea[]) as p(id, body)
     where p.id in (select h ->> 1 from stored s, jsonb_array_elements(s.holes::jsonb) h)
),
kept as (
    insert into quarantine (id, waba_id, field, entry_time, reason, value, received_at)
    select q.id, q.waba_id, q.field, q.entry_time, q.reason, q.value, $4::float8
      from unnest($13::text[], $14::text[], $15::text[], $16::bigint[], $17::text[],
                  $18::text[]) as q(id, waba_id, field, entry_time, reason, value)
     where (select ok from fits) order by q.id
    on conflict (id) do nothing
    returning id
)
select (select ok from fits) as fits, array(select id from stored) as stored,
       array(select id from kept) as kept
"""

# $1 ids $2 kinds (delivered | retry | dead) $3 next attempt (retry) $4 error
# $5 now $6 this process's lease owner
_SETTLED = """
outcome as (
    select * from unnest($1::text[], $2::text[], $3::float8[], $4::text[])
        as o(id, kind, at, error)
),
settled as (
    update events e set
        state = case o.kind when 'delivered' then 'delivered'
                            when 'retry' then 'pending' else 'dead' end,
        attempts = e.attempts + (o.kind <> 'delivered')::integer,
        delivered_at = case when o.kind = 'delivered' then $5::float8 else e.delivered_at end,
        next_attempt_at = case o.kind when 'retry' then o.at
                                      when 'dead' then null else e.next_attempt_at end,
        last_error = case when o.kind = 'delivered' then e.last_error else o.error end,
        lease_until = null, lease_owner = null
      from outcome o
     where e.id = o.id
       and case when o.kind = 'delivered' then e.state not in ('delivered', 'purged')
                else e.state = 'in_flight' and e.lease_owner = $6::uuid end
    returning e.id
)"""

# ... $7 limit $8 lease until
SETTLE_AND_CLAIM = f"""
with {_SETTLED},
due as (
    select id from events
     where state = 'pending' and next_attempt_at <= $5::float8 and id <> all($1::text[])
     order by next_attempt_at, seq
     limit $7::integer
       for update skip locked
),
claimed as (
    update events e set state = 'in_flight', lease_until = $8::float8, lease_owner = $6::uuid
      from due where e.id = due.id
    returning e.id, e.own, e.attempts, coalesce(e.replayed_at, e.received_at) as since,
              e.holes, e.batch, e.next_attempt_at, e.seq
)
select 0 as kind, id, own, attempts, since, holes, batch, next_attempt_at, seq from claimed
union all
select 1, p.id, p.body, null, null, null, p.batch, null, null
  from (select distinct c.batch, h ->> 1 as id
          from claimed c, jsonb_array_elements(c.holes::jsonb) h) wanted,
       -- One primary-key lookup per part wanted ("limit" keeps the planner from turning
       -- this into a scan of every part when it misjudges how many are wanted).
       lateral (select id, body, batch from parts
                 where batch = wanted.batch and id = wanted.id limit 1) p
order by kind, next_attempt_at, seq
"""

SETTLE = f"with {_SETTLED} select count(*) from settled"

# $1 ids $2 owner
RELEASE = """
update events set state = 'pending', lease_until = null, lease_owner = null
 where id = any($1::text[]) and state = 'in_flight' and lease_owner = $2::uuid
"""

# $1 now.  Only expired leases, whoever held them: on a shared spool a live lease may
# be another replica's send in progress.
RECOVER = """
update events set state = 'pending', lease_until = null, lease_owner = null
 where state = 'in_flight' and lease_until < $1::float8
"""

NEXT_DUE = "select min(next_attempt_at) from events where state = 'pending'"

DEPTH = """
select coalesce(sum(n), 0)::bigint from spool_counts where state in ('pending', 'in_flight')
"""

# One lookup at the start of a partial index, whatever the spool's size.
OLDEST = "select min(received_at) from events where state in ('pending', 'in_flight')"

COUNTS = "select state, coalesce(sum(n), 0)::bigint from spool_counts group by state"

# $1 ids: what is stored for them (direct mode's dedup lookup)
KNOWN = "select id, state, created_at from events where id = any($1::text[])"
