"""The SQLite spool's disk guard: ingest is admitted only with the reserve held and room
to spare; the reserve is released for a draining write that found the disk full; it is
re-created (and ingest resumes) once there is room for it and as much again."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import SpoolUnavailable
from sidecar.spool.sqlite.database import Database
from sidecar.spool.sqlite.disk import DISK_FULL, DiskGuard

MiB = 1 << 20


class Disk:
    def __init__(self, free: int) -> None:
        self.free = free


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    state = Disk(100 * MiB)
    monkeypatch.setattr(DiskGuard, "free_bytes", lambda self: state.free)
    return state


def test_admission_hysteresis(tmp_path: Path, disk: Disk) -> None:
    guard = DiskGuard(tmp_path / "spool.db", 4 * MiB)
    assert not guard.reserve_held()
    assert guard.admit(0) and guard.reserve_held()  # created on first use
    disk.free = 3 * MiB
    assert not guard.admit(0)  # low: refused, the reserve still held ...
    assert guard.admit(2 * MiB)  # ... unless the file's own free pages make up for it
    guard.release("test")
    disk.free = 7 * MiB
    assert not guard.admit(0) and guard.is_full(0)  # not yet room for reserve + as much
    disk.free = 8 * MiB
    assert not guard.is_full(0)
    assert guard.admit(0) and guard.reserve_held()


def test_a_draining_write_gets_the_reserve_and_is_retried(tmp_path: Path, disk: Disk) -> None:
    db = Database(tmp_path / "spool.db", reserve_bytes=MiB)
    try:
        db.check_writable()
        assert db.disk.reserve_held()
        calls: list[int] = []

        def op() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise SpoolUnavailable(DISK_FULL)
            return "done"

        assert db.with_room(op) == "done" and len(calls) == 2
        assert not db.disk.reserve_held() and db.disk_low
        disk.free = MiB  # still low: ingest and /readyz refuse
        with pytest.raises(SpoolUnavailable, match="disk full"):
            db.check_writable()
        with pytest.raises(SpoolUnavailable):  # no reserve left to give: fails as is
            db.with_room(lambda: (_ for _ in ()).throw(SpoolUnavailable(DISK_FULL)))
        disk.free = 10 * MiB
        db.check_writable()  # recovered by itself
        assert db.disk.reserve_held()
    finally:
        db.close()
