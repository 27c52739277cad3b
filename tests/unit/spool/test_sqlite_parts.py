"""The SQLite spool's schema 2: shared parts stored once and freed with the last event
that refers to them, and the migration of a version-1 file on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from spool_contract import RETENTION_S, T0, ack, add, claim, make_event, replaying, sharing_events

from sidecar.clock import ManualClock
from sidecar.events import Event, encode_event
from sidecar.spool import SQLiteSpool
from sidecar.spool.sqlite.schema import SCHEMA_VERSION

# The version-1 tables exactly as released (schema.py before shared parts), frozen here
# so the migration is tested against a real old file.
V1_DDL = """
create table events (id text primary key, body text not null,
    state text not null check (state in ('pending', 'in_flight', 'delivered', 'dead')),
    attempts integer not null default 0, received_at real not null, next_attempt_at real,
    lease_until real, last_error text, delivered_at real, created_at real not null,
    replayed_at real);
create index events_due on events (state, next_attempt_at);
create index events_received on events (state, received_at);
create index events_delivered on events (state, delivered_at);
create table seen (id text primary key, created_at real not null);
create index seen_created on seen (created_at);
create table quarantine (id text primary key, waba_id text not null, field text not null,
    entry_time integer, reason text not null, value text not null, received_at real not null,
    replayed_at real);
create index quarantine_received on quarantine (received_at);
create table state_counts (state text primary key, n integer not null);
create trigger events_count_insert after insert on events begin
    update state_counts set n = n + 1 where state = new.state; end;
create trigger events_count_delete after delete on events begin
    update state_counts set n = n - 1 where state = old.state; end;
create trigger events_count_update after update of state on events
    when old.state is not new.state begin
    update state_counts set n = n - 1 where state = old.state;
    update state_counts set n = n + 1 where state = new.state; end;
insert into state_counts values ('pending', 0), ('in_flight', 0), ('delivered', 0), ('dead', 0);
pragma user_version = 1;
"""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "spool.db"


def parts(spool: SQLiteSpool) -> list[tuple[str, int]]:
    return spool.db.conn.execute("select id, refs from parts order by id").fetchall()


def v1_file(path: Path, events: list[Event]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.executemany(
        "insert into events (id, body, state, received_at, next_attempt_at, created_at)"
        " values (?, ?, 'pending', ?, ?, ?)",
        [(e.id, encode_event(e).decode(), T0, T0, T0) for e in events])
    conn.execute("insert into quarantine values ('q1', 'waba1', 'account_update', 1, 'old',"
                 " '{\"event\":\"VERIFIED\"}', ?, null)", (T0,))
    conn.commit()
    conn.close()


async def test_each_shared_part_is_stored_once(path: Path, clock: ManualClock) -> None:
    spool = SQLiteSpool(path, dedup_retention_s=RETENTION_S, clock=clock)
    events = sharing_events(50)
    await add(spool, events)
    assert [refs for _, refs in parts(spool)] == [50, 50]  # metadata and contact
    (longest,) = spool.db.conn.execute("select max(length(body)) from events").fetchone()
    assert longest < 300  # each row holds its own part only, not the 5 KB metadata
    spool.close()


async def test_a_part_goes_with_the_last_event_that_refers_to_it(
        path: Path, clock: ManualClock) -> None:
    spool = SQLiteSpool(path, dedup_retention_s=RETENTION_S, clock=clock)
    first, second = sharing_events(2)
    await add(spool, [first, second])
    await claim(spool, 2)
    await ack(spool, [first.id])
    clock.now += 10
    await spool.purge(delivered_before=clock.now)
    assert [refs for _, refs in parts(spool)] == [1, 1]
    await ack(spool, [second.id])
    clock.now += 10
    await spool.purge(delivered_before=clock.now)
    assert parts(spool) == []
    spool.close()


async def test_a_version_1_spool_is_migrated_on_open(path: Path, clock: ManualClock) -> None:
    old = sharing_events(2)
    v1_file(path, old)
    spool = SQLiteSpool(path, dedup_retention_s=RETENTION_S, clock=clock)
    conn = spool.db.conn
    assert conn.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION == 2
    columns = {row[1] for row in conn.execute("pragma table_info(events)")}
    assert "parts" in columns
    assert conn.execute("select count(*) from events where parts is null").fetchone()[0] == 2
    # Old rows are read as they were stored; new ones share parts; both reassemble exactly.
    new = sharing_events(2, first=2)
    assert (await add(spool, old + new)).stored == [e.id for e in new]
    claimed = await claim(spool, 10)
    assert {c.id: c.body for c in claimed} == {e.id: encode_event(e) for e in old + new}
    assert [refs for _, refs in parts(spool)] == [2, 2]
    # The version-1 quarantine is still listed and replayable.
    (row,) = await spool.list_quarantined()
    assert (row.id, row.reason) == ("q1", "old")
    assert (await spool.replay(["q1"], **replaying())).events_added == 1
    # Purging old rows works and touches no part.
    await ack(spool, [e.id for e in old])
    clock.now += 10
    assert (await spool.purge(delivered_before=clock.now)).delivered == 2
    assert [refs for _, refs in parts(spool)] == [2, 2]
    spool.close()
    again = SQLiteSpool(path, dedup_retention_s=RETENTION_S, clock=clock)  # idempotent
    assert again.db.conn.execute("pragma user_version").fetchone()[0] == 2
    again.close()


async def test_an_event_that_shares_nothing_is_stored_whole(path: Path,
                                                            clock: ManualClock) -> None:
    # The usual delivery: one message with its metadata and contact; cutting them out
    # would only cost a second encoding and two part rows.
    (alone,) = sharing_events(1)
    spool = SQLiteSpool(path, clock=clock)
    await add(spool, [alone])
    assert parts(spool) == []
    (claimed,) = await claim(spool, 1)
    assert claimed.body == encode_event(alone)
    spool.close()


async def test_an_event_whose_part_is_gone_is_dead_lettered_and_the_rest_claimed(
        path: Path, clock: ManualClock) -> None:
    # Damage from outside (a hand edit, a restored backup of one table): one bad row
    # must not stop delivery, in this claim or any later one.
    spool = SQLiteSpool(path, dedup_retention_s=RETENTION_S, clock=clock)
    damaged = sharing_events(2)
    await add(spool, [*damaged, make_event(1)])
    spool.db.conn.execute("delete from parts where id = (select min(id) from parts)")
    claimed = await claim(spool, 10)
    assert [c.id for c in claimed] == [make_event(1).id]
    dead = spool.admin.list_events(state="dead")
    assert {r.id for r in dead} == {e.id for e in damaged}
    assert all("cannot be reassembled" in (r.last_error or "") for r in dead)
    assert await claim(spool, 10) == []
    spool.close()
