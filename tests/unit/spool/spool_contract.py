"""The storage contract's test suite: every spool backend must pass it unchanged.

A backend's test module subclasses ``SpoolContract`` and implements ``open_spool``
(huey's ``StorageTests`` idea).  Everything here goes through the contract's public,
async operations only; what is particular to one backend (files, locks, SQL) is tested
in that backend's own module.
"""

from __future__ import annotations

import dataclasses

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from sidecar.clock import ManualClock
from sidecar.errors import SpoolUnavailable
from sidecar.events import Event, QuarantinedChange, content_event_id, encode_event
from sidecar.normalize import renormalize
from sidecar.spool import AddResult, PurgeResult, Settlement, Spool, SpooledEvent

T0 = 1_800_000_000.0
RETENTION_S = 1000.0

MakeSpool = Callable[..., Awaitable[Spool]]


def make_event(n: int | str, *, type_: str = "whatsapp.account_update") -> Event:
    return Event(id=f"evt_{n}", type=type_, field="account_update", waba_id="waba1",
                 phone_number_id=None, occurred_at="2027-01-15T08:00:00Z",
                 received_at="2027-01-15T08:00:00.000Z", data={"n": n, "text": "héllo"})


def make_quarantined(value: dict[str, object], *, field: str = "account_update",
                     reason: str = "event is required") -> QuarantinedChange:
    return QuarantinedChange(id=content_event_id("waba1", field, 1700000000, value),
                             waba_id="waba1", field=field, entry_time=1700000000,
                             reason=reason, value=value)


async def add(spool: Spool, events: Sequence[Event],
              quarantined: Sequence[QuarantinedChange] = ()) -> AddResult:
    (result,) = await spool.add_many([(events, list(quarantined))])
    return result


async def claim(spool: Spool, limit: int, *, lease_s: float = 30) -> list[SpooledEvent]:
    return await spool.settle_and_claim(Settlement(), limit, lease_s=lease_s)


async def ack(spool: Spool, ids: Sequence[str]) -> None:
    await spool.settle(Settlement(delivered=list(ids)))


async def retry(spool: Spool, id_: str, *, at: float, error: str) -> None:
    await spool.settle(Settlement(retry=[(id_, at, error)]))


async def dead(spool: Spool, id_: str, *, error: str) -> None:
    await spool.settle(Settlement(dead=[(id_, error)]))


async def depth(spool: Spool) -> int:
    return (await spool.backlog())[0]


def sharing_events(n: int, *, first: int = 0) -> list[Event]:
    """Events of one change, as normalize makes them: ``metadata`` and ``contact`` are the
    same objects in every event (a spool stores each once)."""
    metadata = {"display_phone_number": "15557654321", "phone_number_id": "1122",
                "padding": "m" * 5000}
    contact = {"profile": {"name": "Zoë \u00e9 \"quoted\" \u0000"}, "wa_id": "1"}
    return [Event(id=f"evt_s{i}", type="whatsapp.message", field="messages", waba_id="waba1",
                  phone_number_id="1122", occurred_at="2027-01-15T08:00:00Z",
                  received_at="2027-01-15T08:00:00.000Z",
                  data={"id": f"wamid.{i}", "metadata": metadata, "text": {"body": "héllo"},
                        "contact": contact})
            for i in range(first, first + n)]


def replaying(*, force: bool = False) -> dict[str, Any]:
    return {"force": force, "renormalize": functools.partial(renormalize, force=force)}


class SpoolContract:
    """Subclass as ``TestXSpool(SpoolContract)`` and implement ``open_spool``."""

    async def open_spool(self, tmp_path: Any, clock: ManualClock, *,
                         max_spool_events: int, dedup_retention_s: float) -> Spool:
        raise NotImplementedError

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(T0)

    @pytest.fixture
    async def make_spool(self, tmp_path: Any, clock: ManualClock) -> AsyncIterator[MakeSpool]:
        opened: list[Spool] = []

        async def make(*, max_spool_events: int = 1_000_000,
                       dedup_retention_s: float = RETENTION_S) -> Spool:
            spool = await self.open_spool(tmp_path, clock, max_spool_events=max_spool_events,
                                          dedup_retention_s=dedup_retention_s)
            opened.append(spool)
            return spool

        yield make
        for spool in opened:
            spool.close()

    @pytest.fixture
    async def spool(self, make_spool: MakeSpool) -> Spool:
        return await make_spool()

    # ------------------------------------------------------------ add, dedup

    async def test_add_stores_pending_and_reports_ids(self, spool: Spool) -> None:
        result = await add(spool, [make_event(1), make_event(2)])
        assert result == AddResult(stored=["evt_1", "evt_2"], duplicates=0, quarantined=0)
        assert await depth(spool) == 2
        assert [r.state for r in await spool.list_events()] == ["pending", "pending"]

    async def test_repeat_of_stored_id_is_a_duplicate(self, spool: Spool) -> None:
        await add(spool, [make_event(1)])
        result = await add(spool, [make_event(1), make_event(2)])
        assert result.stored == ["evt_2"] and result.duplicates == 1
        assert await depth(spool) == 2

    async def test_repeat_inside_one_batch_is_a_duplicate(self, spool: Spool) -> None:
        result = await add(spool, [make_event(1), make_event(1)])
        assert result.stored == ["evt_1"] and result.duplicates == 1

    async def test_repeat_of_delivered_id_within_retention_is_a_duplicate(
            self, spool: Spool, clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await ack(spool, [c.event.id for c in await claim(spool, 10)])
        clock.now += RETENTION_S - 1
        assert (await add(spool, [make_event(1)])).duplicates == 1

    async def test_repeat_of_delivered_id_after_retention_is_stored_again(
            self, spool: Spool, clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await ack(spool, [c.event.id for c in await claim(spool, 10)])
        clock.now += RETENTION_S + 1
        assert (await add(spool, [make_event(1)])).stored == ["evt_1"]
        stats = await spool.stats()
        assert stats.pending == 1 and stats.delivered == 0

    async def test_dead_id_blocks_repeats_beyond_retention(self, spool: Spool,
                                                           clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await dead(spool, "evt_1", error="upstream answered 500")
        clock.now += 5 * RETENTION_S
        assert (await add(spool, [make_event(1)])).duplicates == 1

    async def test_quarantined_changes_are_stored_once(self, spool: Spool) -> None:
        q = make_quarantined({"foo": 1})
        assert (await add(spool, [], [q])).quarantined == 1
        assert (await add(spool, [], [q])).quarantined == 0
        (row,) = await spool.list_quarantined()
        assert (row.id, row.field, row.reason, row.replayed_at) == (
            q.id, "account_update", "event is required", None)

    async def test_a_nul_in_a_quarantined_change_fails_nothing(self, spool: Spool) -> None:
        # Signed bodies may carry any string in entry.id and field; a text column that
        # refuses one must not fail the group commit the change shares with others.
        q = dataclasses.replace(make_quarantined({"foo": 2}, field="odd\x00field",
                                                 reason="odd\x00field: bad"),
                                waba_id="1\x002")
        result = await add(spool, [make_event(1)], [q])
        assert (result.stored, result.quarantined) == (["evt_1"], 1)
        (row,) = await spool.list_quarantined()
        assert row.id == q.id and row.field.startswith("odd")

    async def test_event_body_round_trips(self, spool: Spool) -> None:
        event = make_event(1)
        await add(spool, [event])
        (claimed,) = await claim(spool, 1)
        assert claimed.event == event
        assert claimed.attempts == 0 and claimed.received_at == T0

    async def test_add_many_reports_per_batch(self, spool: Spool) -> None:
        results = await spool.add_many([([make_event(1)], []),
                                        ([make_event(1), make_event(2)],
                                         [make_quarantined({"x": 1})])])
        assert results == [AddResult(["evt_1"], 0, 0), AddResult(["evt_2"], 1, 1)]

    # ------------------------------------------------------------ limits

    async def test_full_spool_raises_and_stores_nothing(self, make_spool: MakeSpool) -> None:
        spool = await make_spool(max_spool_events=3)
        await add(spool, [make_event(1), make_event(2)])
        with pytest.raises(SpoolUnavailable, match="spool full"):
            await spool.add_many([([make_event(3)], [make_quarantined({"a": 1})]),
                                  ([make_event(4)], [])])
        assert await depth(spool) == 2
        assert await spool.list_quarantined() == []
        assert (await add(spool, [make_event(3)])).stored == ["evt_3"]

    async def test_duplicates_are_accepted_when_full(self, make_spool: MakeSpool) -> None:
        spool = await make_spool(max_spool_events=1)
        await add(spool, [make_event(1)])
        assert (await add(spool, [make_event(1)])).duplicates == 1

    async def test_a_healthy_spool_is_writable(self, spool: Spool) -> None:
        await spool.check_writable()

    # ------------------------------------------------------------ direct mode

    async def test_direct_mode_records_delivered_ids_for_dedup(self, spool: Spool) -> None:
        await add(spool, [make_event(1)])
        assert await spool.filter_new(["evt_1", "evt_2", "evt_3"]) == {"evt_2", "evt_3"}
        await spool.record_delivered([make_event(2)], [make_quarantined({"q": 1})])
        assert await spool.filter_new(["evt_2", "evt_3"]) == {"evt_3"}
        stats = await spool.stats()
        assert (stats.pending, stats.delivered, stats.quarantined) == (1, 1, 1)

    # ------------------------------------------------------------ delivery states

    async def test_claim_takes_due_events_oldest_first(self, spool: Spool,
                                                       clock: ManualClock) -> None:
        for i in range(3):
            await add(spool, [make_event(i)])
            clock.now += 1
        claimed = await claim(spool, 2)
        assert [c.event.id for c in claimed] == ["evt_0", "evt_1"]
        assert (await claim(spool, 10))[0].event.id == "evt_2"
        assert await claim(spool, 10) == []
        assert (await spool.stats()).in_flight == 3

    async def test_a_leased_event_is_not_claimed_again(self, spool: Spool,
                                                       clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1, lease_s=30)
        clock.now += 29
        assert await claim(spool, 1) == []
        assert await spool.recover() == 0

    async def test_ack_marks_delivered(self, spool: Spool) -> None:
        await add(spool, [make_event(1), make_event(2)])
        await claim(spool, 10)
        await ack(spool, ["evt_1", "evt_2"])
        stats = await spool.stats()
        assert (stats.pending, stats.in_flight, stats.delivered) == (0, 0, 2)
        assert await depth(spool) == 0

    async def test_settle_and_claim_records_outcomes_then_claims(self, spool: Spool) -> None:
        await add(spool, [make_event(1)])
        (first,) = await claim(spool, 1)
        await add(spool, [make_event(2)])
        (second,) = await spool.settle_and_claim(Settlement(delivered=[first.id]), 5,
                                                 lease_s=30)
        assert second.id == "evt_2"
        assert (await spool.stats()).delivered == 1

    async def test_retry_counts_an_attempt_and_waits(self, spool: Spool,
                                                     clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await retry(spool, "evt_1", at=clock.now + 10, error="upstream answered 503")
        assert await claim(spool, 1) == []
        (row,) = await spool.list_events()
        assert (row.state, row.attempts, row.last_error) == ("pending", 1,
                                                             "upstream answered 503")
        clock.now += 10
        (again,) = await claim(spool, 1)
        assert again.attempts == 1

    async def test_backlog_is_the_depth_and_the_age_of_its_oldest_event(
            self, spool: Spool, clock: ManualClock) -> None:
        assert await spool.backlog() == (0, None)
        await add(spool, [make_event(1)])
        clock.now += 5
        await add(spool, [make_event(2)])
        clock.now += 2
        assert await spool.backlog() == (2, 7.0)
        await claim(spool, 1)  # in flight is still behind
        assert await spool.backlog() == (2, 7.0)
        await ack(spool, ["evt_1"])
        assert await spool.backlog() == (1, 2.0)

    async def test_next_due_is_the_earliest_pending_attempt(self, spool: Spool,
                                                            clock: ManualClock) -> None:
        assert await spool.next_due() is None
        await add(spool, [make_event(1), make_event(2)])
        assert await spool.next_due() == clock.now  # new events are due at once
        await claim(spool, 2)
        assert await spool.next_due() is None  # in flight: not pending
        await retry(spool, "evt_1", at=clock.now + 10, error="upstream answered 503")
        await retry(spool, "evt_2", at=clock.now + 4, error="upstream answered 503")
        assert await spool.next_due() == clock.now + 4

    async def test_dead_counts_an_attempt(self, spool: Spool) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await dead(spool, "evt_1", error="upstream answered 500")
        (row,) = await spool.list_events(state="dead")
        assert (row.attempts, row.last_error, row.type) == (1, "upstream answered 500",
                                                            "whatsapp.account_update")
        assert await depth(spool) == 0 and (await spool.stats()).dead == 1

    async def test_unknown_state_is_refused(self, spool: Spool) -> None:
        with pytest.raises(ValueError, match="unknown state"):
            await spool.list_events(state="lost")

    async def test_recover_requeues_only_expired_leases(self, spool: Spool,
                                                        clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        clock.now += 10
        await add(spool, [make_event(2)])
        await claim(spool, 1)
        clock.now += 25  # evt_1's lease (T0+30) expired, evt_2's (T0+40) not
        assert await spool.recover() == 1
        assert [c.event.id for c in await claim(spool, 10)] == ["evt_1"]

    async def test_release_gives_events_back_without_an_attempt(self, spool: Spool) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await spool.release(["evt_1"])
        (again,) = await claim(spool, 1)
        assert again.attempts == 0

    async def test_stats(self, spool: Spool, clock: ManualClock) -> None:
        assert (await spool.stats()).oldest_pending_age_s is None
        await add(spool, [make_event(1), make_event(2), make_event(3), make_event(4)],
                  [make_quarantined({"a": 1})])
        clock.now += 5
        await add(spool, [make_event(5)])
        await claim(spool, 3)
        await ack(spool, ["evt_1"])
        await dead(spool, "evt_2", error="x")
        clock.now += 2
        stats = await spool.stats()
        assert (stats.pending, stats.in_flight, stats.delivered, stats.dead,
                stats.quarantined) == (2, 1, 1, 1, 1)
        assert stats.oldest_pending_age_s == 7

    # ------------------------------------------------------------ replay

    async def test_replay_dead_requeues_with_reset_attempts_and_age(
            self, spool: Spool, clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await dead(spool, "evt_1", error="x")
        clock.now += 100
        result = await spool.replay(["evt_1", "evt_nope"], **replaying())
        assert result.replayed == ["evt_1"] and result.not_found == ["evt_nope"]
        assert not result.is_complete
        (again,) = await claim(spool, 1)
        assert (again.attempts, again.received_at) == (0, T0 + 100)

    async def test_replay_skips_pending_and_delivered_unless_forced(self, spool: Spool) -> None:
        await add(spool, [make_event(1), make_event(2)])
        await claim(spool, 1)
        await ack(spool, ["evt_1"])
        result = await spool.replay(["evt_1", "evt_2"], **replaying())
        assert result.replayed == [] and set(result.skipped) == {"evt_1", "evt_2"}
        assert (await spool.replay(["evt_1"], **replaying(force=True))).replayed == ["evt_1"]
        assert (await spool.stats()).pending == 2

    async def test_replay_all_dead(self, spool: Spool) -> None:
        await add(spool, [make_event(i) for i in range(3)])
        await claim(spool, 3)
        await dead(spool, "evt_0", error="x")
        await dead(spool, "evt_1", error="x")
        await ack(spool, ["evt_2"])
        assert await spool.replay_all_dead() == 2
        stats = await spool.stats()
        assert stats.pending == 2 and stats.dead == 0

    async def test_forced_replay_forwards_a_broken_change_whole(self, spool: Spool) -> None:
        q = make_quarantined({"event": 5, "extra": [1]})
        await add(spool, [], [q])
        result = await spool.replay([q.id], **replaying(force=True))
        assert result.is_complete
        (claimed,) = await claim(spool, 10)
        assert claimed.event.type == "whatsapp.account_update"
        assert claimed.event.data == {"event": 5, "extra": [1]}
        assert claimed.event.id == q.id

    async def test_replay_quarantined_still_invalid_is_reported(self, spool: Spool) -> None:
        q = make_quarantined({"event": 5})
        await add(spool, [], [q])
        result = await spool.replay([q.id], **replaying())
        assert result.still_invalid == {q.id: "account_update: event must be a string"}
        assert await depth(spool) == 0
        assert (await spool.list_quarantined())[0].replayed_at is None

    async def test_replay_quarantined_now_valid_adds_events(self, spool: Spool,
                                                            clock: ManualClock) -> None:
        # The change was quarantined under an older, stricter schema; today it passes.
        q = make_quarantined({"event": "VERIFIED_ACCOUNT"}, reason="old schema said no")
        await add(spool, [], [q])
        clock.now += 60
        result = await spool.replay([q.id], **replaying())
        assert result.replayed == [q.id] and result.events_added == 1 and result.is_complete
        (claimed,) = await claim(spool, 1)
        assert claimed.event.type == "whatsapp.account_update"
        assert claimed.event.data == {"event": "VERIFIED_ACCOUNT"}
        assert claimed.event.received_at.startswith("2027-01-15T08:00:00")  # original receipt
        assert (await spool.list_quarantined())[0].replayed_at == T0 + 60
        assert (await spool.stats()).quarantined == 0

    # ------------------------------------------------------------ purge

    async def test_purge_deletes_old_delivered_and_keeps_dedup(self, spool: Spool,
                                                               clock: ManualClock) -> None:
        await add(spool, [make_event(1), make_event(2), make_event(3)])
        await claim(spool, 2)
        await ack(spool, ["evt_1", "evt_2"])
        clock.now += 100
        assert (await spool.purge(delivered_before=clock.now)).delivered == 2
        assert (await spool.stats()).delivered == 0 and await depth(spool) == 1
        assert (await add(spool, [make_event(1)])).duplicates == 1  # still within retention
        assert await spool.filter_new(["evt_2"]) == set()
        clock.now += RETENTION_S  # past retention
        assert await spool.filter_new(["evt_2"]) == {"evt_2"}
        await spool.purge(delivered_before=clock.now)
        assert (await add(spool, [make_event(2)])).stored == ["evt_2"]

    async def test_a_tombstone_past_retention_no_longer_blocks(self, spool: Spool,
                                                               clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await ack(spool, ["evt_1"])
        clock.now += 100
        assert (await spool.purge(delivered_before=clock.now)).delivered == 1  # a tombstone
        clock.now += RETENTION_S  # past retention, not purged again
        assert await add(spool, [make_event(1), make_event(1)]) == AddResult(["evt_1"], 1, 0)
        assert await depth(spool) == 1

    async def test_purge_keeps_recently_delivered(self, spool: Spool,
                                                  clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await ack(spool, ["evt_1"])
        assert (await spool.purge(delivered_before=clock.now - 1)).total == 0
        assert (await spool.stats()).delivered == 1

    # ------------------------------------------------------------ shared parts

    async def test_events_sharing_parts_round_trip_exactly(self, spool: Spool) -> None:
        events = sharing_events(3)
        await add(spool, events)
        claimed = await claim(spool, 10)
        assert {c.id: c.body for c in claimed} == {e.id: encode_event(e) for e in events}
        assert [c.event for c in claimed] == events

    async def test_shared_parts_outlive_a_purged_event_that_shared_them(
            self, spool: Spool, clock: ManualClock) -> None:
        first, second = sharing_events(2)
        await add(spool, [first, second])
        await claim(spool, 1)
        await ack(spool, [first.id])
        clock.now += 100
        assert (await spool.purge(delivered_before=clock.now)).delivered == 1
        (claimed,) = await claim(spool, 10)
        assert claimed.body == encode_event(second)
        await ack(spool, [second.id])
        clock.now += 100
        assert (await spool.purge(delivered_before=clock.now)).delivered == 1
        (third,) = sharing_events(1, first=2)  # the same parts again, after none is left
        await add(spool, [third])
        (claimed,) = await claim(spool, 10)
        assert claimed.body == encode_event(third)

    async def test_a_repeat_of_events_sharing_parts_is_a_duplicate(self, spool: Spool) -> None:
        await add(spool, sharing_events(2))
        assert (await add(spool, sharing_events(3))).stored == ["evt_s2"]
        claimed = await claim(spool, 10)
        assert sorted(c.body for c in claimed) == sorted(encode_event(e)
                                                         for e in sharing_events(3))

    async def test_direct_mode_keeps_events_sharing_parts_replayable(self,
                                                                     spool: Spool) -> None:
        events = sharing_events(2)
        await spool.record_delivered(events, [])
        result = await spool.replay([events[1].id], **replaying(force=True))
        assert result.replayed == [events[1].id]
        (claimed,) = await claim(spool, 10)
        assert claimed.body == encode_event(events[1])

    # ------------------------------------------------------------ retention

    async def test_purge_dead_deletes_old_dead_letters_only(self, spool: Spool,
                                                            clock: ManualClock) -> None:
        await add(spool, [make_event(1), make_event(2), make_event(3)])
        await claim(spool, 3)
        await dead(spool, "evt_1", error="x")
        await ack(spool, ["evt_2"])
        clock.now += 50
        await add(spool, [make_event(4)])
        await claim(spool, 1)
        await dead(spool, "evt_4", error="x")  # received 50 s later: kept
        result = await spool.purge(dead_before=clock.now - 10)
        assert result == PurgeResult(dead=1)
        stats = await spool.stats()
        assert (stats.dead, stats.delivered, stats.in_flight) == (1, 1, 1)
        assert [r.id for r in await spool.list_events(state="dead")] == ["evt_4"]
        # Its id still blocks a repeat inside the dedup window (a tombstone) ...
        assert (await add(spool, [make_event(1)])).duplicates == 1
        clock.now += RETENTION_S  # ... and no longer after it.
        assert (await add(spool, [make_event(1)])).stored == ["evt_1"]

    async def test_a_replay_restarts_a_dead_letters_retention(self, spool: Spool,
                                                              clock: ManualClock) -> None:
        await add(spool, [make_event(1)])
        await claim(spool, 1)
        await dead(spool, "evt_1", error="x")
        clock.now += 100
        await spool.replay(["evt_1"], **replaying())
        await claim(spool, 1)
        await dead(spool, "evt_1", error="x")
        assert (await spool.purge(dead_before=clock.now - 1)).dead == 0
        assert (await spool.purge(dead_before=clock.now + 1)).dead == 1

    async def test_purge_quarantined_deletes_old_changes_replayed_or_not(
            self, spool: Spool, clock: ManualClock) -> None:
        old, replayed = make_quarantined({"a": 1}), make_quarantined(
            {"event": "VERIFIED_ACCOUNT"})
        await add(spool, [], [old, replayed])
        await spool.replay([replayed.id], **replaying())
        clock.now += 100
        new = make_quarantined({"b": 2})
        await add(spool, [], [new])
        assert await spool.purge(quarantined_before=clock.now - 10) == PurgeResult(
            quarantined=2)
        assert [r.id for r in await spool.list_quarantined()] == [new.id]
        assert (await spool.stats()).pending == 1  # the replayed change's event stays

    async def test_purge_with_no_kind_deletes_nothing(self, spool: Spool,
                                                      clock: ManualClock) -> None:
        await add(spool, [make_event(1)], [make_quarantined({"a": 1})])
        await claim(spool, 1)
        await dead(spool, "evt_1", error="x")
        clock.now += 100
        assert await spool.purge() == PurgeResult()
        stats = await spool.stats()
        assert (stats.dead, stats.quarantined) == (1, 1)

    async def test_purge_never_deletes_pending_or_in_flight(self, spool: Spool,
                                                            clock: ManualClock) -> None:
        await add(spool, [make_event(1), make_event(2)])
        await claim(spool, 1)
        clock.now += 100
        result = await spool.purge(delivered_before=clock.now, dead_before=clock.now,
                                   quarantined_before=clock.now)
        assert result.total == 0 and await depth(spool) == 2

    async def test_dead_and_quarantined_do_not_count_toward_max_spool_events(
            self, make_spool: MakeSpool) -> None:
        spool = await make_spool(max_spool_events=2)
        await add(spool, [make_event(1), make_event(2)],
                  [make_quarantined({"a": n}) for n in range(3)])
        await claim(spool, 2)
        await dead(spool, "evt_1", error="x")
        await dead(spool, "evt_2", error="x")
        assert (await add(spool, [make_event(3), make_event(4)])).stored == ["evt_3", "evt_4"]

    async def test_check_writable_fails_while_ingest_would(self, make_spool: MakeSpool) -> None:
        spool = await make_spool(max_spool_events=1)
        await spool.check_writable()
        await add(spool, [make_event(1)])
        with pytest.raises(SpoolUnavailable):
            await add(spool, [make_event(2)])
        with pytest.raises(SpoolUnavailable):  # /readyz says what the ingest would
            await spool.check_writable()
        assert (await spool.stats()).disk_full is False
