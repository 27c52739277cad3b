"""The PostgreSQL spool's schema 2: shared parts stored once per batch, in the statement
that stores the events; read back by the claim, in the same statement; freed with the
last event of their batch or by the sweep that ends a purge; and the migration of a
version-1 database."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import psycopg
import pytest
from spool_contract import (
    RETENTION_S,
    T0,
    ack,
    add,
    claim,
    dead,
    make_event,
    make_quarantined,
    replaying,
    sharing_events,
)

from sidecar.clock import ManualClock
from sidecar.events import Event, encode_event
from sidecar.spool import PostgresSpool, PurgeResult
from sidecar.spool.postgres import store
from sidecar.spool.postgres.migrate import MIGRATIONS, ensure_schema
from sidecar.spool.postgres.schema import SCHEMA_TABLE, SCHEMA_VERSION

# Version 1's statements as released: a schema change is a new version, never an edit
# of one that databases already have (the migration test below builds version 1 from them).
V1_SHA256 = "5fba6e46457dc946c4ff21f946b0ea095a7418169fa57a4857f23f67c03036df"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def spool(pg_url: str, clock: ManualClock):  # type: ignore[no-untyped-def]
    s = PostgresSpool(pg_url, dedup_retention_s=RETENTION_S, clock=clock)
    yield s
    s.close()


def sql(url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, args or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def parts(url: str) -> list[tuple[object, ...]]:
    """(batch, part id) of every stored part."""
    return sql(url, "select batch, id from parts order by batch, id")


def bodies(events: list[Event]) -> dict[str, bytes]:
    return {e.id: encode_event(e) for e in events}


async def test_each_shared_part_is_stored_once_per_batch(spool, pg_url: str) -> None:
    await add(spool, sharing_events(50))
    stored = parts(pg_url)
    assert len(stored) == 2  # metadata and contact, once for 50 events
    (batch,) = {b for b, _ in stored}
    ((count, batches, longest),) = sql(pg_url, "select count(*), count(distinct batch),"
                                              " max(length(own)) from events"
                                              " where holes is not null")
    assert (count, batches) == (50, 1)
    assert isinstance(longest, int) and longest < 300  # not the 5 KB metadata
    assert sql(pg_url, "select distinct batch from events") == [(batch,)]
    await add(spool, sharing_events(50, first=50))  # another batch: its own parts
    assert len(parts(pg_url)) == 4
    claimed = await claim(spool, 100)
    assert {c.id: c.body for c in claimed} == bodies(sharing_events(100))


async def test_an_event_that_shares_nothing_is_stored_whole(spool, pg_url: str) -> None:
    (alone,) = sharing_events(1)
    await add(spool, [alone])
    assert parts(pg_url) == []
    assert sql(pg_url, "select own, holes, batch from events") == [
        (encode_event(alone), None, None)]
    (claimed,) = await claim(spool, 1)
    assert claimed.body == encode_event(alone)


async def test_a_claim_is_one_statement_and_carries_each_part_once(
        spool, monkeypatch: pytest.MonkeyPatch) -> None:
    await add(spool, sharing_events(20))
    statements: list[str] = []
    part_rows: list[int] = []
    real_execute, real_spooled = psycopg.Connection.execute, store.spooled

    def spy(self, query, *args, **kw):  # type: ignore[no-untyped-def]
        statements.append(str(query))
        return real_execute(self, query, *args, **kw)

    def counting(rows):  # type: ignore[no-untyped-def]
        part_rows.append(sum(1 for r in rows if r[0] == 1))
        return real_spooled(rows)

    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    monkeypatch.setattr(store, "spooled", counting)
    claimed = await claim(spool, 20)
    monkeypatch.undo()
    assert {c.id: c.body for c in claimed} == bodies(sharing_events(20))
    assert [q for q in statements if "synchronous_commit" not in q] == [
        store.sql.SETTLE_AND_CLAIM]
    assert part_rows == [2]  # not 2 per event


async def test_the_parts_go_with_the_last_event_of_their_batch(
        spool, pg_url: str, clock: ManualClock) -> None:
    first, second, third = sharing_events(3)
    await add(spool, [first, second, third])
    await claim(spool, 3)
    await ack(spool, [first.id])
    await dead(spool, second.id, error="x")
    clock.now += 10
    assert (await spool.purge(delivered_before=clock.now)).delivered == 1
    assert len(parts(pg_url)) == 2  # second and third still refer to them
    assert (await spool.purge(dead_before=clock.now)).dead == 1
    assert len(parts(pg_url)) == 2
    await ack(spool, [third.id])
    clock.now += 10
    assert await spool.purge(delivered_before=clock.now) == PurgeResult(delivered=1)
    assert parts(pg_url) == []
    # Tombstones keep blocking repeats; they hold neither a body nor parts.
    assert sql(pg_url, "select count(*) from events where state = 'purged'"
                       " and own is null and holes is null and batch is null") == [(3,)]
    assert (await add(spool, [first, second, third])).duplicates == 3


async def test_parts_a_replaced_stale_row_left_are_swept(
        spool, pg_url: str, clock: ManualClock) -> None:
    events = sharing_events(2)
    await add(spool, events)
    await ack(spool, [c.id for c in await claim(spool, 2)])
    (old,) = {b for b, _ in parts(pg_url)}
    clock.now += RETENTION_S + 1  # past the window: the same ids are stored anew
    assert (await add(spool, events)).stored == [e.id for e in events]
    assert len(parts(pg_url)) == 4  # the old batch has no event left
    assert await spool.purge(delivered_before=clock.now) == PurgeResult()
    left = parts(pg_url)
    assert len(left) == 2 and old not in {b for b, _ in left}
    assert {c.id: c.body for c in await claim(spool, 2)} == bodies(events)


async def test_the_sweep_keeps_every_part_an_event_refers_to(
        spool, pg_url: str, clock: ManualClock) -> None:
    events = sharing_events(4)
    await add(spool, events)
    await claim(spool, 3)
    await ack(spool, [events[0].id])
    await dead(spool, events[1].id, error="x")  # events[2] in flight, events[3] pending
    orphan = uuid.uuid4()
    sql(pg_url, "insert into parts (batch, id, body) values (%s, 'part_x', '\\x30')", orphan)
    assert spool._purge.sweep_parts() == 1
    assert {b for b, _ in parts(pg_url)} != {orphan} and len(parts(pg_url)) == 2
    clock.now += 31
    await spool.recover()
    await spool.replay([events[0].id, events[1].id], **replaying(force=True))
    assert {c.id: c.body for c in await claim(spool, 10)} == bodies(events)


async def test_two_replicas_purging_at_once_share_the_work_and_free_every_part(
        pg_url: str, clock: ManualClock) -> None:
    a, b = (PostgresSpool(pg_url, dedup_retention_s=RETENTION_S, clock=clock)
            for _ in range(2))
    batches = [sharing_events(100, first=100 * i) for i in range(30)]
    for events in batches:
        await add(a, events)
    await add(a, sharing_events(3, first=5000))  # a batch that stays pending
    await ack(a, [c.id for c in await claim(a, 3000)])
    clock.now += 10
    results = await asyncio.gather(a.purge(delivered_before=clock.now),
                                   b.purge(delivered_before=clock.now))
    assert sum(r.delivered for r in results) == 3000
    assert len(parts(pg_url)) == 2  # the pending batch's only
    assert (await a.stats()).delivered == 0
    a.close()
    b.close()


async def test_direct_mode_and_replays_store_shared_parts_once(spool, pg_url: str) -> None:
    delivered = sharing_events(3)
    await spool.record_delivered(delivered, [])
    assert len(parts(pg_url)) == 2
    q = make_quarantined({"a": 1})
    await add(spool, [], [q])
    replayed = sharing_events(3, first=10)
    result = await spool.replay([q.id], renormalize=lambda change, at: replayed)
    assert result.events_added == 3
    assert len(parts(pg_url)) == 4 and len({b for b, _ in parts(pg_url)}) == 2
    await spool.replay([delivered[0].id], **replaying(force=True))
    claimed = await claim(spool, 10)
    assert {c.id: c.body for c in claimed} == bodies([delivered[0], *replayed])


# ---------------------------------------------------------------- migration

def test_version_1_statements_are_as_released() -> None:
    assert hashlib.sha256("\n".join(MIGRATIONS[1]).encode()).hexdigest() == V1_SHA256


def v1_database(url: str, events: list[Event]) -> None:
    """A version-1 spool with rows in it: whole bodies, pending and delivered, a
    tombstone, a quarantined change."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in MIGRATIONS[1]:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute(f"create table {SCHEMA_TABLE} (version integer not null)")  # type: ignore[arg-type]
        conn.execute(f"insert into {SCHEMA_TABLE} values (1)")  # type: ignore[arg-type]
        for n, (event, state) in enumerate(zip(events, ("pending", "pending", "delivered"))):
            conn.execute(
                "insert into events (id, body, state, attempts, received_at, next_attempt_at,"
                " delivered_at, created_at) values (%s, %s, %s, %s, %s, %s, %s, %s)",
                (event.id, encode_event(event), state, int(state == "delivered"), T0 - n,
                 T0, T0 if state == "delivered" else None, T0))
        conn.execute("insert into events (id, state, received_at, created_at)"
                     " values ('evt_gone', 'purged', %s, %s)", (T0, T0))
        conn.execute("insert into quarantine (id, waba_id, field, entry_time, reason, value,"
                     " received_at) values ('q1', 'waba1', 'account_update', 1, 'old',"
                     " '{\"event\":\"VERIFIED\"}', %s)", (T0,))


async def test_a_version_1_database_is_migrated_and_its_rows_read_as_before(
        pg_url: str, clock: ManualClock) -> None:
    old = sharing_events(3)
    v1_database(pg_url, old)
    spool = PostgresSpool(pg_url, dedup_retention_s=RETENTION_S, clock=clock)
    spool.take_ownership()  # migrates, as `sidecar serve` does at start
    assert sql(pg_url, f"select version from {SCHEMA_TABLE}") == [(SCHEMA_VERSION,)] == [(2,)]
    assert sql(pg_url, "select count(*) from events where holes is null and batch is null"
                       " and (own is not null or state = 'purged')") == [(4,)]
    # A version-1 replica still running fails instead of sending an own part whole.
    with pytest.raises(psycopg.errors.UndefinedColumn):
        sql(pg_url, "select body from events")
    stats = await spool.stats()
    assert (stats.pending, stats.delivered) == (2, 1)
    # Old rows are read as stored; new ones share parts; both reassemble exactly.
    new = sharing_events(2, first=3)
    assert (await add(spool, old + new + [Event.decode(encode_event(old[0]))])).stored == [
        e.id for e in new]
    assert await spool.filter_new(["evt_gone"]) == set()  # the old tombstone still blocks
    assert len(parts(pg_url)) == 2
    assert {c.id: c.body for c in await claim(spool, 10)} == bodies(old[:2] + new)
    assert [r.type for r in await spool.list_events(state="delivered")] == ["whatsapp.message"]
    (row,) = await spool.list_quarantined()
    assert (row.id, row.reason) == ("q1", "old")
    assert (await spool.replay(["q1"], **replaying())).events_added == 1
    await spool.replay([old[2].id], **replaying(force=True))  # an old delivered row
    again = {c.id: c.body for c in await claim(spool, 10)}  # with the replayed change's
    assert len(again) == 2 and again[old[2].id] == encode_event(old[2])
    await ack(spool, list(again) + [e.id for e in old[:2] + new])
    clock.now += 10
    assert (await spool.purge(delivered_before=clock.now)).delivered == 6
    assert parts(pg_url) == []
    spool.close()
    again_spool = PostgresSpool(pg_url)  # a second start finds the work done
    again_spool.take_ownership()
    assert sql(pg_url, f"select version from {SCHEMA_TABLE}") == [(2,)]
    again_spool.close()


def test_a_migration_is_not_cut_short_by_the_statement_timeout(pg_url: str) -> None:
    # Building the new indexes reads the whole events table: on a large spool that can
    # take longer than an ordinary statement may (which would fail every start).
    v1_database(pg_url, [])
    sql(pg_url, "insert into events (id, body, state, received_at, created_at)"
                " select 'evt_' || g, '\\x7b7d', 'delivered', g, g"
                " from generate_series(1, 300000) g")
    with psycopg.connect(pg_url, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
        conn.execute("set statement_timeout = '20ms'")
        assert ensure_schema(conn, "spool", create=True) == SCHEMA_VERSION
        assert conn.execute("show statement_timeout").fetchone() == ("20ms",)  # only its own


async def test_an_event_whose_part_is_gone_is_dead_lettered_and_the_rest_claimed(
        spool, pg_url: str) -> None:
    damaged = sharing_events(2)
    await add(spool, [*damaged, make_event(1)])
    sql(pg_url, "delete from parts where id = (select min(id) from parts)")
    claimed = await claim(spool, 10)
    assert [c.id for c in claimed] == [make_event(1).id]
    dead = await spool.list_events(state="dead")
    assert {r.id for r in dead} == {e.id for e in damaged}
    assert all("cannot be reassembled" in (r.last_error or "") for r in dead)
    assert await claim(spool, 10) == []
