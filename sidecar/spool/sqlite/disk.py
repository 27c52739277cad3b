"""The spool's filesystem filling up: ingest is refused before the disk is full, and a
reserve keeps room for everything that drains the spool or frees space.

SQLite needs free disk for every write, small ones included: a claim or a settlement
appends frames to the WAL, which may have to grow, and a checkpoint may grow the file.
When the disk is simply full, claims and settlements fail like ingest does, the backlog
stops draining, and even ``spool purge`` fails.  So:

* **Ingest stops first.**  An ingest write (and ``/readyz``, through ``check_writable``)
  is admitted only while the filesystem's free space plus the file's own free pages (which
  SQLite fills before it grows the file) is at least ``reserve_bytes``.
* **A reserve file** (``spool.db.reserve``, ``reserve_bytes`` allocated with
  ``posix_fallocate``) holds that much more.  When a write that drains the spool (a
  claim, a settlement, a purge) fails with "database or disk is full", the reserve is
  released (deleted) and the write tried again, so delivery, housekeeping and ``spool
  purge`` go on.  Released only then, not as soon as the disk runs low: whatever filled
  the disk has stopped by the time a write fails, and does not get the reserve.  While
  it is released, ingest stays refused (503, Meta retries) until the filesystem has room
  for the reserve and as much again; then the reserve is re-created and ingest resumes,
  by itself.  The hysteresis keeps a disk at the edge from flapping between 200 and 503.

The state lives in the filesystem (the reserve file and the free space), so every
process sharing the spool (``--workers N``, the CLI) sees the same thing.  Each process
logs one line when the disk turns full and one when it recovers, never one per request.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["DiskGuard", "DISK_FULL"]

log = logging.getLogger("sidecar.spool")

DISK_FULL = "spool disk full"


class DiskGuard:
    def __init__(self, db_path: Path, reserve_bytes: int) -> None:
        self.folder = db_path.parent
        self.reserve_path = db_path.with_name(db_path.name + ".reserve")
        self.reserve_bytes = reserve_bytes
        self._full: bool | None = None  # this process's last verdict, to log changes once

    # ------------------------------------------------------------------ checks

    def admit(self, spare_bytes: int | Callable[[], int]) -> bool:
        """May an ingest write go ahead?  ``spare_bytes``: free pages inside the file
        (or how to count them: asked only when the filesystem alone has too little room,
        so the usual commit spends no statement on it).  Re-creates a released reserve
        once there is room for it and as much again."""
        free = self.free_bytes()
        held = self.reserve_held()
        if not held and free >= 2 * self.reserve_bytes and self._restore():
            held, free = True, self.free_bytes()
        ok = held and (free >= self.reserve_bytes or free + (
            spare_bytes() if callable(spare_bytes) else spare_bytes) >= self.reserve_bytes)
        self._note(full=not ok, free=free)
        return ok

    def is_full(self, spare_bytes: int) -> bool:
        """What ``admit`` would say, without changing anything (``spool stats``)."""
        free = self.free_bytes()
        if self.reserve_held():
            return free + spare_bytes < self.reserve_bytes
        return free < 2 * self.reserve_bytes

    def release(self, why: str) -> None:
        try:
            os.unlink(self.reserve_path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("spool.reserve_release_failed", extra={"error": exc.strerror})
            return
        log.info("spool.reserve_released", extra={"reason": why,
                                                  "reserve_bytes": self.reserve_bytes})

    # ------------------------------------------------------------------ facts

    def free_bytes(self) -> int:
        try:
            st = os.statvfs(self.folder)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def reserve_held(self) -> bool:
        try:
            st = os.stat(self.reserve_path)
        except OSError:
            return False
        # Allocated, not just sized: a sparse file would reserve nothing.
        return st.st_size >= self.reserve_bytes and st.st_blocks * 512 >= self.reserve_bytes

    # ------------------------------------------------------------------ internals

    def _restore(self) -> bool:
        tmp = self.reserve_path.with_name(self.reserve_path.name + ".new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, self.reserve_bytes)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve_path)  # whole or not at all, for other processes
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        return True

    def _note(self, *, full: bool, free: int) -> None:
        if full == self._full:
            return
        first = self._full is None
        self._full = full
        facts = {"free_bytes": free, "reserve_bytes": self.reserve_bytes,
                 "folder": str(self.folder)}
        if full:
            log.error("spool.disk_full", extra={
                **facts, "detail": "new deliveries get 503 until space returns; the "
                                   "backlog keeps draining"})
        elif not first:
            log.info("spool.disk_recovered", extra=facts)


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        block = b"\0" * (1 << 20)  # a filesystem without fallocate: write it out
        written = 0
        while written < size:
            written += os.write(fd, block[:size - written])
        os.fsync(fd)
