"""The SQLite spool: the storage contract against a real file, then what is particular to
SQLite (the file and its schema, one transaction per group, disk and lock failures,
ownership, crash recovery)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from spool_contract import (
    RETENTION_S,
    T0,
    SpoolContract,
    ack,
    add,
    claim,
    depth,
    make_event,
)

from sidecar.clock import ManualClock
from sidecar.errors import SpoolUnavailable
from sidecar.events import Event
from sidecar.spool import SQLiteSpool
from sidecar.spool.sqlite.schema import SCHEMA_VERSION


class TestSQLiteSpool(SpoolContract):
    async def open_spool(self, tmp_path: Path, clock: ManualClock, *, max_spool_events: int,
                         dedup_retention_s: float) -> SQLiteSpool:
        return SQLiteSpool(tmp_path / "var" / "spool.db", max_spool_events=max_spool_events,
                           dedup_retention_s=dedup_retention_s, clock=clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "spool.db"


@pytest.fixture
def spool(path: Path, clock: ManualClock):  # type: ignore[no-untyped-def]
    s = SQLiteSpool(path, dedup_retention_s=RETENTION_S, clock=clock)
    yield s
    s.close()


def seen_rows(spool: SQLiteSpool) -> int:
    return int(spool.db.conn.execute("select count(*) from seen").fetchone()[0])


# ---------------------------------------------------------------- opening

def test_creates_parent_dir_schema_and_wal(path: Path, spool: SQLiteSpool) -> None:
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"events", "quarantine", "seen"} <= tables
    conn.close()


async def test_a_new_spool_is_readable_by_its_owner_only(tmp_path: Path,
                                                         clock: ManualClock) -> None:
    # Customers' messages, numbers and names: not world-readable under the usual umask
    # (the file and its -wal and -shm were 0644), and the folder made for it neither.
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "var" / "spool.db"
        spool = SQLiteSpool(path, clock=clock)
        await add(spool, [make_event("private")])
    finally:
        os.umask(old_umask)
    try:
        for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        spool.close()


async def test_reopen_keeps_events(path: Path, clock: ManualClock) -> None:
    s = SQLiteSpool(path, clock=clock)
    await add(s, [make_event(1)])
    s.close()
    s = SQLiteSpool(path, clock=clock)
    assert await depth(s) == 1
    assert (await add(s, [make_event(1)])).duplicates == 1
    s.close()


def test_path_that_is_a_directory_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolUnavailable):
        SQLiteSpool(tmp_path / "spool.db")


def test_parent_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolUnavailable):
        SQLiteSpool(tmp_path / "file" / "spool.db")


def test_newer_schema_version_is_refused(path: Path) -> None:
    SQLiteSpool(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"pragma user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolUnavailable, match="newer"):
        SQLiteSpool(path)


# ---------------------------------------------------------------- one transaction per group

def test_add_many_commits_all_batches_in_one_transaction(spool: SQLiteSpool) -> None:
    statements: list[str] = []
    spool.db.conn.set_trace_callback(statements.append)
    results = spool.store.add_many([([make_event(i)], []) for i in range(50)])
    spool.db.conn.set_trace_callback(None)
    assert [r.stored for r in results] == [[f"evt_{i}"] for i in range(50)]
    assert sum(s.lower().startswith("begin") for s in statements) == 1
    assert sum(s.lower() == "commit" for s in statements) == 1
    # One lookup finds every known id of the commit (not one or two selects per event).
    assert sum(" where id in (select value from json_each(" in s for s in statements) == 1


# ---------------------------------------------------------------- failures

async def test_disk_full_raises_and_leaves_nothing_half_written(spool: SQLiteSpool) -> None:
    await add(spool, [make_event("first")])
    (pages,) = spool.db.conn.execute("pragma page_count").fetchone()
    spool.db.conn.execute(f"pragma max_page_count = {pages + 2}")
    big = [Event(**{**make_event(i).to_dict(), "data": {"pad": "x" * 4000}}) for i in range(50)]
    with pytest.raises(SpoolUnavailable):
        await add(spool, big)
    spool.db.conn.execute("pragma max_page_count = 1000000")
    assert await depth(spool) == 1
    assert [r.id for r in await spool.list_events()] == ["evt_first"]
    assert (await add(spool, [make_event(2)])).stored == ["evt_2"]  # usable again


async def test_read_only_database_raises(spool: SQLiteSpool) -> None:
    spool.db.conn.execute("pragma query_only = on")
    with pytest.raises(SpoolUnavailable):
        await add(spool, [make_event(1)])
    with pytest.raises(SpoolUnavailable):
        await spool.check_writable()
    spool.db.conn.execute("pragma query_only = off")
    assert await depth(spool) == 0


async def test_locked_database_raises_after_busy_timeout(path: Path, spool: SQLiteSpool) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("begin immediate")
    spool.db.conn.execute("pragma busy_timeout = 50")
    try:
        with pytest.raises(SpoolUnavailable):
            await add(spool, [make_event(1)])
    finally:
        other.execute("rollback")
        other.close()
    assert (await add(spool, [make_event(1)])).stored == ["evt_1"]


async def test_closed_spool_raises(path: Path) -> None:
    s = SQLiteSpool(path)
    s.close()
    with pytest.raises(SpoolUnavailable):
        await s.backlog()


# ---------------------------------------------------------------- tombstones

async def deliver_and_purge(spool: SQLiteSpool, clock: ManualClock) -> None:
    """evt_1 delivered, then purged: only its tombstone is left."""
    await add(spool, [make_event(1)])
    await claim(spool, 1)
    await ack(spool, ["evt_1"])
    clock.now += 100
    await spool.purge(delivered_before=clock.now)


async def test_purge_drops_tombstones_past_retention(spool: SQLiteSpool,
                                                     clock: ManualClock) -> None:
    await deliver_and_purge(spool, clock)
    assert seen_rows(spool) == 1
    clock.now += RETENTION_S
    await spool.purge(delivered_before=clock.now)
    assert seen_rows(spool) == 0


async def test_a_stale_tombstone_is_replaced_by_the_new_event(spool: SQLiteSpool,
                                                              clock: ManualClock) -> None:
    await deliver_and_purge(spool, clock)
    clock.now += RETENTION_S
    await add(spool, [make_event(1)])
    assert seen_rows(spool) == 0


# ---------------------------------------------------------------- ownership and crashes

async def test_recover_after_a_crash_mid_send(path: Path, clock: ManualClock) -> None:
    s = SQLiteSpool(path, clock=clock)
    await add(s, [make_event(1)])
    await claim(s, 1)
    s.db.conn.close()  # "SIGKILL": no settlement, no release
    s = SQLiteSpool(path, clock=clock)
    clock.now += 31
    assert await s.recover() == 1
    assert [c.event.id for c in await claim(s, 1)] == ["evt_1"]
    s.close()


async def test_recover_at_start_requeues_live_leases_too(spool: SQLiteSpool) -> None:
    # One process delivers from a file: at its start, every claim is a dead process's.
    await add(spool, [make_event(1), make_event(2)])
    await claim(spool, 2, lease_s=60)
    assert await spool.recover() == 0
    assert await spool.recover(at_start=True) == 2
    assert sorted(c.event.id for c in await claim(spool, 10)) == ["evt_1", "evt_2"]


def test_only_one_owner_per_spool(path: Path, clock: ManualClock) -> None:
    first, second = SQLiteSpool(path, clock=clock), SQLiteSpool(path, clock=clock)
    first.take_ownership()
    with pytest.raises(SpoolUnavailable, match="in use by another"):
        second.take_ownership()
    first.close()  # the lock goes with the owner
    second.take_ownership()
    second.close()
