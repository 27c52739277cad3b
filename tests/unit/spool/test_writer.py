"""Group commit: many requests share one durable commit, on a real SQLite spool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from spool_contract import T0, depth, make_event

from sidecar.clock import ManualClock
from sidecar.errors import SpoolUnavailable
from sidecar.spool import AddResult, Batch, SpoolWriter, SQLiteSpool


@pytest.fixture
def spool(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteSpool(tmp_path / "spool.db", clock=ManualClock(T0))
    yield s
    s.close()


def record_groups(spool: SQLiteSpool, *, gate: asyncio.Event | None = None) -> list[int]:
    """Replace ``add_many`` by one that records each commit's size (and, with a gate,
    waits for it first, as a spool stuck behind another process's lock would)."""
    groups: list[int] = []
    original = spool.add_many

    async def recording(batches: Sequence[Batch]) -> list[AddResult]:
        groups.append(len(batches))
        if gate is not None:
            await gate.wait()
        return await original(batches)

    spool.add_many = recording  # type: ignore[method-assign]
    return groups


async def test_writer_shares_one_commit_between_concurrent_callers(spool: SQLiteSpool) -> None:
    gate = asyncio.Event()
    calls = record_groups(spool, gate=gate)
    writer = SpoolWriter(spool)
    writer.start()
    first = asyncio.create_task(writer.add([make_event(0)], []))
    await asyncio.sleep(0.05)  # the first commit is now in progress (held by the gate)
    rest = [asyncio.create_task(writer.add([make_event(i)], [])) for i in range(1, 21)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(first, *rest)
    await writer.aclose()
    assert calls == [1, 20]  # everyone who arrived during the first commit shares the second
    assert [r.stored for r in results] == [[f"evt_{i}"] for i in range(21)]


async def test_writer_failure_fails_every_caller_in_the_group(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path / "small.db", max_spool_events=3)
    writer = SpoolWriter(spool)
    tasks = [asyncio.create_task(writer.add([make_event(i)], [])) for i in range(5)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await writer.aclose()
    assert all(isinstance(r, SpoolUnavailable) for r in results)
    assert await depth(spool) == 0
    spool.close()


async def test_writer_delays_a_commit_only_under_concurrent_load(spool: SQLiteSpool) -> None:
    groups = record_groups(spool)
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
    assert lone < 0.25
    assert groups == [1, 2, 2]
    assert await depth(spool) == 5


async def test_writer_waits_only_after_a_commit_of_several_requests(spool: SQLiteSpool) -> None:
    # At a moderate rate commits carry a few requests; the window would only add latency.
    async def alone_after_a_group_of(size: int, writer: SpoolWriter, first_id: int) -> float:
        await asyncio.gather(*(writer.add([make_event(first_id + i)], [])
                               for i in range(size)))  # queued in one turn: one commit
        start = time.monotonic()
        await writer.add([make_event(first_id + 100)], [])
        return time.monotonic() - start

    writer = SpoolWriter(spool, commit_window_s=0.3)  # the default threshold, 4
    after_three = await alone_after_a_group_of(3, writer, 0)
    after_four = await alone_after_a_group_of(4, writer, 1000)
    await writer.aclose()
    assert after_three < 0.25  # not delayed
    assert after_four >= 0.29  # the process was busy: it waited for others to join
    assert await depth(spool) == 9


async def test_writer_times_out_a_caller_but_still_commits_its_batch(spool: SQLiteSpool) -> None:
    gate = asyncio.Event()  # the spool is stuck (another process holds the write lock)
    record_groups(spool, gate=gate)
    writer = SpoolWriter(spool, add_timeout_s=0.2)
    with pytest.raises(SpoolUnavailable, match="busy"):
        await writer.add([make_event(1)], [])  # Meta gets a 503 and retries
    gate.set()
    await writer.aclose()
    assert await depth(spool) == 1  # committed once the spool freed up; the retry is a duplicate


async def test_writer_refuses_after_close(spool: SQLiteSpool) -> None:
    writer = SpoolWriter(spool)
    await writer.add([make_event(1)], [])
    await writer.aclose()
    with pytest.raises(SpoolUnavailable):
        await writer.add([make_event(2)], [])
    assert await depth(spool) == 1
