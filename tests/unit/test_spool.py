"""The SQLite spool against a real file: dedup, group commit, limits, failures, states."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sidecar.errors import SpoolUnavailable
from sidecar.events import Event, content_event_id
from sidecar.normalize import QuarantinedChange
from sidecar.spool import AddResult, Spool, SpoolWriter

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_event(n: int | str, *, type_: str = "whatsapp.account_update") -> Event:
    return Event(id=f"evt_{n}", type=type_, field="account_update", waba_id="waba1",
                 phone_number_id=None, occurred_at="2027-01-15T08:00:00Z",
                 received_at="2027-01-15T08:00:00.000Z", data={"n": n, "text": "héllo"})


def make_quarantined(value: dict[str, object], *, field: str = "account_update",
                     reason: str = "event is required") -> QuarantinedChange:
    return QuarantinedChange(id=content_event_id("waba1", field, 1700000000, value),
                             waba_id="waba1", field=field, entry_time=1700000000,
                             reason=reason, value=value)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "spool.db"


@pytest.fixture
def spool(path: Path, clock: Clock):
    s = Spool(path, dedup_retention_s=1000, clock=clock)
    yield s
    s.close()


def add(spool: Spool, events: list[Event], quarantined: list[QuarantinedChange] = ()) -> AddResult:
    (result,) = spool.add_many([(events, list(quarantined))])
    return result


# ---------------------------------------------------------------- opening

def test_creates_parent_dir_schema_and_wal(path: Path, spool: Spool) -> None:
    assert path.is_file()
    conn = sqlite3.connect(path)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("pragma user_version").fetchone()[0] == Spool.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"events", "quarantine", "seen"} <= tables
    conn.close()


def test_reopen_keeps_events(path: Path, clock: Clock) -> None:
    s = Spool(path, clock=clock)
    add(s, [make_event(1)])
    s.close()
    s = Spool(path, clock=clock)
    assert s.depth() == 1
    assert add(s, [make_event(1)]).duplicates == 1
    s.close()


def test_path_that_is_a_directory_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolUnavailable):
        Spool(tmp_path / "spool.db")


def test_parent_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolUnavailable):
        Spool(tmp_path / "file" / "spool.db")


def test_newer_schema_version_is_refused(path: Path) -> None:
    Spool(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"pragma user_version = {Spool.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolUnavailable, match="newer"):
        Spool(path)


# ---------------------------------------------------------------- add, dedup

def test_add_stores_pending_and_reports_ids(spool: Spool) -> None:
    result = add(spool, [make_event(1), make_event(2)])
    assert result == AddResult(stored=["evt_1", "evt_2"], duplicates=0, quarantined=0)
    assert spool.depth() == 2
    assert [r.state for r in spool.list_events()] == ["pending", "pending"]


def test_repeat_of_stored_id_is_a_duplicate(spool: Spool) -> None:
    add(spool, [make_event(1)])
    result = add(spool, [make_event(1), make_event(2)])
    assert result.stored == ["evt_2"] and result.duplicates == 1
    assert spool.depth() == 2


def test_repeat_inside_one_batch_is_a_duplicate(spool: Spool) -> None:
    result = add(spool, [make_event(1), make_event(1)])
    assert result.stored == ["evt_1"] and result.duplicates == 1


def test_repeat_of_delivered_id_within_retention_is_a_duplicate(spool: Spool,
                                                                 clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.ack([c.event.id for c in spool.claim(10, lease_s=30)])
    clock.now += 999
    assert add(spool, [make_event(1)]).duplicates == 1


def test_repeat_of_delivered_id_after_retention_is_stored_again(spool: Spool,
                                                                clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.ack([c.event.id for c in spool.claim(10, lease_s=30)])
    clock.now += 1001
    assert add(spool, [make_event(1)]).stored == ["evt_1"]
    assert spool.stats().pending == 1 and spool.stats().delivered == 0


def test_dead_id_blocks_repeats_beyond_retention(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.dead("evt_1", error="upstream answered 500")
    clock.now += 5000
    assert add(spool, [make_event(1)]).duplicates == 1


def test_quarantined_changes_are_stored_once(spool: Spool) -> None:
    q = make_quarantined({"foo": 1})
    assert add(spool, [], [q]).quarantined == 1
    assert add(spool, [], [q]).quarantined == 0
    (row,) = spool.list_quarantined()
    assert (row.id, row.field, row.reason, row.replayed_at) == (q.id, "account_update",
                                                                "event is required", None)


def test_event_body_round_trips(spool: Spool) -> None:
    event = make_event(1)
    add(spool, [event])
    (claimed,) = spool.claim(1, lease_s=30)
    assert claimed.event == event
    assert claimed.attempts == 0 and claimed.received_at == T0


# ---------------------------------------------------------------- group commit

def test_add_many_commits_all_batches_in_one_transaction(spool: Spool) -> None:
    statements: list[str] = []
    spool._conn.set_trace_callback(statements.append)
    results = spool.add_many([([make_event(i)], []) for i in range(50)])
    spool._conn.set_trace_callback(None)
    assert [r.stored for r in results] == [[f"evt_{i}"] for i in range(50)]
    assert sum(s.lower().startswith("begin") for s in statements) == 1
    assert sum(s.lower() == "commit" for s in statements) == 1
    # One lookup finds every known id of the commit (not one or two selects per event).
    assert sum(" where id in (select value from json_each(" in s for s in statements) == 1


def test_add_many_reports_per_batch(spool: Spool) -> None:
    results = spool.add_many([([make_event(1)], []), ([make_event(1), make_event(2)],
                                                      [make_quarantined({"x": 1})])])
    assert results == [AddResult(["evt_1"], 0, 0), AddResult(["evt_2"], 1, 1)]


def test_writer_shares_one_commit_between_concurrent_callers(spool: Spool) -> None:
    calls: list[int] = []
    original = spool.add_many
    gate = threading.Event()

    def counting(batches):  # type: ignore[no-untyped-def]
        calls.append(len(batches))
        gate.wait(5)
        return original(batches)

    spool.add_many = counting  # type: ignore[method-assign]

    async def scenario() -> list[AddResult]:
        writer = SpoolWriter(spool)
        writer.start()
        first = asyncio.create_task(writer.add([make_event(0)], []))
        await asyncio.sleep(0.05)  # the first commit is now in progress (held by the gate)
        rest = [asyncio.create_task(writer.add([make_event(i)], [])) for i in range(1, 21)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest)
        await writer.aclose()
        return results

    results = asyncio.run(scenario())
    assert calls == [1, 20]  # everyone who arrived during the first commit shares the second
    assert [r.stored for r in results] == [[f"evt_{i}"] for i in range(21)]


def test_writer_failure_fails_every_caller_in_the_group(spool: Spool) -> None:
    spool.max_spool_events = 3

    async def scenario() -> list[object]:
        writer = SpoolWriter(spool)
        tasks = [asyncio.create_task(writer.add([make_event(i)], [])) for i in range(5)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await writer.aclose()
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(r, SpoolUnavailable) for r in results)
    assert spool.depth() == 0


def test_writer_delays_a_commit_only_under_concurrent_load(spool: Spool) -> None:
    original = spool.add_many
    groups: list[int] = []

    def counting(batches):  # type: ignore[no-untyped-def]
        groups.append(len(batches))
        return original(batches)

    spool.add_many = counting  # type: ignore[method-assign]

    async def scenario() -> float:
        writer = SpoolWriter(spool, commit_window_s=0.3, commit_window_min_group=2)
        start = time.monotonic()
        await writer.add([make_event(0)], [])  # alone: committed at once
        lone = time.monotonic() - start
        await asyncio.gather(*(writer.add([make_event(i)], []) for i in (1, 2)))  # together
        # Under load now: a commit waits up to the window, so later arrivals join it.
        first = asyncio.create_task(writer.add([make_event(3)], []))
        await asyncio.sleep(0.1)
        await asyncio.gather(first, writer.add([make_event(4)], []))
        await writer.aclose()
        return lone

    lone = asyncio.run(scenario())
    assert lone < 0.25
    assert groups == [1, 2, 2]
    assert spool.depth() == 5


def test_writer_waits_only_after_a_commit_of_several_requests(spool: Spool) -> None:
    # At a moderate rate commits carry a few requests; the window would only add latency.
    async def alone_after_a_group_of(size: int, writer: SpoolWriter, first_id: int) -> float:
        await asyncio.gather(*(writer.add([make_event(first_id + i)], [])
                               for i in range(size)))  # queued in one turn: one commit
        start = time.monotonic()
        await writer.add([make_event(first_id + 100)], [])
        return time.monotonic() - start

    async def scenario() -> tuple[float, float]:
        writer = SpoolWriter(spool, commit_window_s=0.3)  # the default threshold, 4
        after_three = await alone_after_a_group_of(3, writer, 0)
        after_four = await alone_after_a_group_of(4, writer, 1000)
        await writer.aclose()
        return after_three, after_four

    after_three, after_four = asyncio.run(scenario())
    assert after_three < 0.25  # not delayed
    assert after_four >= 0.29  # the process was busy: it waited for others to join
    assert spool.depth() == 9


def test_writer_times_out_a_caller_but_still_commits_its_batch(spool: Spool) -> None:
    original = spool.add_many
    gate = threading.Event()

    def slow(batches):  # type: ignore[no-untyped-def]
        gate.wait(5)  # the spool is stuck (another process holds the write lock)
        return original(batches)

    spool.add_many = slow  # type: ignore[method-assign]

    async def scenario() -> None:
        writer = SpoolWriter(spool, add_timeout_s=0.2)
        with pytest.raises(SpoolUnavailable, match="busy"):
            await writer.add([make_event(1)], [])  # Meta gets a 503 and retries
        gate.set()
        await writer.aclose()

    asyncio.run(scenario())
    assert spool.depth() == 1  # committed once the spool freed up; the retry is a duplicate


def test_writer_refuses_after_close(spool: Spool) -> None:
    async def scenario() -> None:
        writer = SpoolWriter(spool)
        await writer.add([make_event(1)], [])
        await writer.aclose()
        with pytest.raises(SpoolUnavailable):
            await writer.add([make_event(2)], [])

    asyncio.run(scenario())
    assert spool.depth() == 1


# ---------------------------------------------------------------- limits and failures

def test_full_spool_raises_and_stores_nothing(spool: Spool) -> None:
    spool.max_spool_events = 3
    add(spool, [make_event(1), make_event(2)])
    with pytest.raises(SpoolUnavailable, match="spool full"):
        spool.add_many([([make_event(3)], [make_quarantined({"a": 1})]), ([make_event(4)], [])])
    assert spool.depth() == 2
    assert spool.list_quarantined() == []
    assert add(spool, [make_event(3)]).stored == ["evt_3"]


def test_duplicates_are_accepted_when_full(spool: Spool) -> None:
    spool.max_spool_events = 1
    add(spool, [make_event(1)])
    assert add(spool, [make_event(1)]).duplicates == 1


def test_disk_full_raises_and_leaves_nothing_half_written(spool: Spool) -> None:
    add(spool, [make_event("first")])
    (pages,) = spool._conn.execute("pragma page_count").fetchone()
    spool._conn.execute(f"pragma max_page_count = {pages + 2}")
    big = [Event(**{**make_event(i).to_dict(), "data": {"pad": "x" * 4000}}) for i in range(50)]
    with pytest.raises(SpoolUnavailable):
        add(spool, big)
    spool._conn.execute("pragma max_page_count = 1000000")
    assert spool.depth() == 1
    assert [r.id for r in spool.list_events()] == ["evt_first"]
    assert add(spool, [make_event(2)]).stored == ["evt_2"]  # usable again


def test_read_only_database_raises(spool: Spool) -> None:
    spool._conn.execute("pragma query_only = on")
    with pytest.raises(SpoolUnavailable):
        add(spool, [make_event(1)])
    spool._conn.execute("pragma query_only = off")
    assert spool.depth() == 0


def test_locked_database_raises_after_busy_timeout(path: Path, spool: Spool) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("begin immediate")
    spool._conn.execute("pragma busy_timeout = 50")
    try:
        with pytest.raises(SpoolUnavailable):
            add(spool, [make_event(1)])
    finally:
        other.execute("rollback")
        other.close()
    assert add(spool, [make_event(1)]).stored == ["evt_1"]


def test_closed_spool_raises(path: Path) -> None:
    s = Spool(path)
    s.close()
    with pytest.raises(SpoolUnavailable):
        s.depth()


# ---------------------------------------------------------------- direct mode

def test_direct_mode_records_delivered_ids_for_dedup(spool: Spool) -> None:
    add(spool, [make_event(1)])
    assert spool.filter_new(["evt_1", "evt_2", "evt_3"]) == {"evt_2", "evt_3"}
    spool.record_delivered([make_event(2)], [make_quarantined({"q": 1})])
    assert spool.filter_new(["evt_2", "evt_3"]) == {"evt_3"}
    stats = spool.stats()
    assert (stats.pending, stats.delivered, stats.quarantined) == (1, 1, 1)


# ---------------------------------------------------------------- delivery states

def test_claim_takes_due_events_oldest_first(spool: Spool, clock: Clock) -> None:
    for i in range(3):
        add(spool, [make_event(i)])
        clock.now += 1
    claimed = spool.claim(2, lease_s=30)
    assert [c.event.id for c in claimed] == ["evt_0", "evt_1"]
    assert spool.claim(10, lease_s=30)[0].event.id == "evt_2"
    assert spool.claim(10, lease_s=30) == []
    assert spool.stats().in_flight == 3


def test_ack_marks_delivered(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1), make_event(2)])
    spool.claim(10, lease_s=30)
    spool.ack(["evt_1", "evt_2"])
    stats = spool.stats()
    assert (stats.pending, stats.in_flight, stats.delivered) == (0, 0, 2)
    assert spool.depth() == 0


def test_retry_counts_an_attempt_and_waits(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.retry("evt_1", next_attempt_at=clock.now + 10, error="upstream answered 503")
    assert spool.claim(1, lease_s=30) == []
    (row,) = spool.list_events()
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "upstream answered 503")
    clock.now += 10
    (again,) = spool.claim(1, lease_s=30)
    assert again.attempts == 1


def test_backlog_is_the_depth_and_the_age_of_its_oldest_event(spool: Spool,
                                                                clock: Clock) -> None:
    assert spool.backlog() == (0, None)
    add(spool, [make_event(1)])
    clock.now += 5
    add(spool, [make_event(2)])
    clock.now += 2
    assert spool.backlog() == (2, 7.0)
    spool.claim(1, lease_s=30)  # in flight is still behind
    assert spool.backlog() == (2, 7.0)
    spool.ack(["evt_1"])
    assert spool.backlog() == (1, 2.0)


def test_next_due_is_the_earliest_pending_attempt(spool: Spool, clock: Clock) -> None:
    assert spool.next_due() is None
    add(spool, [make_event(1), make_event(2)])
    assert spool.next_due() == clock.now  # new events are due at once
    spool.claim(2, lease_s=30)
    assert spool.next_due() is None  # in flight: not pending
    spool.retry("evt_1", next_attempt_at=clock.now + 10, error="upstream answered 503")
    spool.retry("evt_2", next_attempt_at=clock.now + 4, error="upstream answered 503")
    assert spool.next_due() == clock.now + 4


def test_dead_counts_an_attempt(spool: Spool) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.dead("evt_1", error="upstream answered 500")
    (row,) = spool.list_events(state="dead")
    assert (row.attempts, row.last_error, row.type) == (1, "upstream answered 500",
                                                        "whatsapp.account_update")
    assert spool.depth() == 0 and spool.stats().dead == 1


def test_recover_requeues_only_expired_leases(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    clock.now += 10
    add(spool, [make_event(2)])
    spool.claim(1, lease_s=30)
    clock.now += 25  # evt_1's lease (T0+30) expired, evt_2's (T0+40) not
    assert spool.recover() == 1
    assert [c.event.id for c in spool.claim(10, lease_s=30)] == ["evt_1"]


def test_recover_after_a_crash_mid_send(path: Path, clock: Clock) -> None:
    s = Spool(path, clock=clock)
    add(s, [make_event(1)])
    s.claim(1, lease_s=30)
    s._conn.close()  # "SIGKILL": no ack, no release
    s = Spool(path, clock=clock)
    clock.now += 31
    assert s.recover() == 1
    assert [c.event.id for c in s.claim(1, lease_s=30)] == ["evt_1"]
    s.close()


def test_recover_all_leases_at_start_requeues_live_leases_too(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1), make_event(2)])
    spool.claim(2, lease_s=60)
    clock.now += 1  # leases far from expiry: only a (re)start may take them back
    assert spool.recover() == 0
    assert spool.recover(all_leases=True) == 2
    assert sorted(c.event.id for c in spool.claim(10, lease_s=60)) == ["evt_1", "evt_2"]


def test_only_one_owner_per_spool(path: Path, clock: Clock) -> None:
    first, second = Spool(path, clock=clock), Spool(path, clock=clock)
    first.take_ownership()
    with pytest.raises(SpoolUnavailable, match="in use by another"):
        second.take_ownership()
    first.close()  # the lock goes with the owner
    second.take_ownership()
    second.close()


def test_release_gives_events_back_without_an_attempt(spool: Spool) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.release(["evt_1"])
    (again,) = spool.claim(1, lease_s=30)
    assert again.attempts == 0


def test_stats(spool: Spool, clock: Clock) -> None:
    assert spool.stats().oldest_pending_age_s is None
    add(spool, [make_event(1), make_event(2), make_event(3), make_event(4)],
        [make_quarantined({"a": 1})])
    clock.now += 5
    add(spool, [make_event(5)])
    spool.claim(3, lease_s=30)
    spool.ack(["evt_1"])
    spool.dead("evt_2", error="x")
    clock.now += 2
    stats = spool.stats()
    assert (stats.pending, stats.in_flight, stats.delivered, stats.dead, stats.quarantined) == \
        (2, 1, 1, 1, 1)
    assert stats.oldest_pending_age_s == 7


# ---------------------------------------------------------------- replay

def test_replay_dead_requeues_with_reset_attempts_and_age(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.dead("evt_1", error="x")
    clock.now += 100
    result = spool.replay(["evt_1", "evt_nope"])
    assert result.replayed == ["evt_1"] and result.not_found == ["evt_nope"]
    assert not result.is_complete
    (again,) = spool.claim(1, lease_s=30)
    assert (again.attempts, again.received_at) == (0, T0 + 100)


def test_replay_skips_pending_and_delivered_unless_forced(spool: Spool) -> None:
    add(spool, [make_event(1), make_event(2)])
    spool.claim(1, lease_s=30)
    spool.ack(["evt_1"])
    result = spool.replay(["evt_1", "evt_2"])
    assert result.replayed == [] and set(result.skipped) == {"evt_1", "evt_2"}
    assert spool.replay(["evt_1"], force=True).replayed == ["evt_1"]
    assert spool.stats().pending == 2


def test_replay_all_dead(spool: Spool) -> None:
    add(spool, [make_event(i) for i in range(3)])
    spool.claim(3, lease_s=30)
    spool.dead("evt_0", error="x")
    spool.dead("evt_1", error="x")
    spool.ack(["evt_2"])
    assert spool.replay_all_dead() == 2
    assert spool.stats().pending == 2 and spool.stats().dead == 0


def test_forced_replay_forwards_a_broken_change_whole(spool: Spool) -> None:
    q = make_quarantined({"event": 5, "extra": [1]})
    add(spool, [], [q])
    result = spool.replay([q.id], force=True)
    assert result.is_complete
    (claimed,) = spool.claim(10, lease_s=30)
    assert claimed.event.type == "whatsapp.account_update"
    assert claimed.event.data == {"event": 5, "extra": [1]}
    assert claimed.event.id == q.id


def test_replay_quarantined_still_invalid_is_reported(spool: Spool) -> None:
    q = make_quarantined({"event": 5})
    add(spool, [], [q])
    result = spool.replay([q.id])
    assert result.still_invalid == {q.id: "account_update: event must be a string"}
    assert spool.depth() == 0 and spool.list_quarantined()[0].replayed_at is None


def test_replay_quarantined_now_valid_adds_events(spool: Spool, clock: Clock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The change was quarantined under an older, stricter schema; today it passes.
    q = make_quarantined({"event": "VERIFIED_ACCOUNT"}, reason="old schema said no")
    add(spool, [], [q])
    clock.now += 60
    result = spool.replay([q.id])
    assert result.replayed == [q.id] and result.events_added == 1 and result.is_complete
    (claimed,) = spool.claim(1, lease_s=30)
    assert claimed.event.type == "whatsapp.account_update"
    assert claimed.event.data == {"event": "VERIFIED_ACCOUNT"}
    assert claimed.event.received_at.startswith("2027-01-15T08:00:00")  # original receipt
    assert spool.list_quarantined()[0].replayed_at == T0 + 60
    assert spool.stats().quarantined == 0


# ---------------------------------------------------------------- purge

def test_purge_deletes_old_delivered_and_keeps_dedup(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1), make_event(2), make_event(3)])
    spool.claim(2, lease_s=30)
    spool.ack(["evt_1", "evt_2"])
    clock.now += 100
    assert spool.purge(delivered_before=clock.now) == 2
    assert spool.stats().delivered == 0 and spool.depth() == 1
    assert add(spool, [make_event(1)]).duplicates == 1  # tombstone: still within retention
    assert spool.filter_new(["evt_2"]) == set()
    clock.now += 1000  # past retention
    assert spool.filter_new(["evt_2"]) == {"evt_2"}
    spool.purge(delivered_before=clock.now)
    assert spool._conn.execute("select count(*) from seen").fetchone()[0] == 0
    assert add(spool, [make_event(2)]).stored == ["evt_2"]


def test_a_tombstone_past_retention_no_longer_blocks(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.ack(["evt_1"])
    clock.now += 100
    assert spool.purge(delivered_before=clock.now) == 1  # leaves a tombstone in seen
    clock.now += 1000  # past retention, not purged again: the stale tombstone is still there
    assert add(spool, [make_event(1), make_event(1)]) == AddResult(["evt_1"], 1, 0)
    assert spool._conn.execute("select count(*) from seen").fetchone()[0] == 0
    assert spool.depth() == 1


def test_purge_keeps_recently_delivered(spool: Spool, clock: Clock) -> None:
    add(spool, [make_event(1)])
    spool.claim(1, lease_s=30)
    spool.ack(["evt_1"])
    assert spool.purge(delivered_before=clock.now - 1) == 0
    assert spool.stats().delivered == 1
