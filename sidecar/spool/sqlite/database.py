"""One SQLite spool file: the connection, its transactions, and the locks around them.

Why these settings: a delivery is acknowledged to Meta only once its events are on disk,
so every write that backs such an acknowledgement commits with ``synchronous=FULL`` in
WAL mode (one fsync per commit, shared by a whole group of requests).  Bookkeeping that
can safely be redone after a power cut (claims, settlements, purges) commits with
``synchronous=NORMAL``: in WAL mode a later FULL commit syncs those frames too, and a
lost settlement only means one more delivery, which at-least-once allows.

Every sqlite3/OS error becomes ``SpoolUnavailable``; a failed transaction is rolled
back, so nothing is ever half-written.  One connection, guarded by a lock, so the
object may be used from worker threads.

A full disk (``disk.py``): ingest writes are admitted only while there is room, and
every other write may use the reserve.  New files use incremental auto-vacuum, so a
purge can give pages back to the filesystem (``give_back``); ``secure_delete`` is
``fast`` so that deleting a large body does not first write it over with zeros (into a
WAL that has no room to grow on a full disk).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import SpoolUnavailable
from sidecar.spool.sqlite.disk import DISK_FULL, DiskGuard
from sidecar.spool.sqlite.schema import SCHEMA_VERSION, migrate, require_json1

__all__ = ["Database", "reason"]

_PRAGMAS = (
    "pragma auto_vacuum = incremental",  # new files only: before the first table exists
    "pragma journal_mode = wal",
    "pragma synchronous = full",
    "pragma busy_timeout = 5000",
    "pragma foreign_keys = off",
    "pragma secure_delete = fast",
)
_SQLITE_FULL = 13
T = TypeVar("T")
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default


class Database:
    def __init__(self, path: Path, *, max_spool_events: int = 1_000_000,
                 dedup_retention_s: float = 604800.0, clock: Clock = SYSTEM_CLOCK,
                 reserve_bytes: int = 64 << 20) -> None:
        self.path = Path(path)
        self.max_spool_events = max_spool_events
        self.dedup_retention_s = dedup_retention_s
        self.clock = clock
        self.disk = DiskGuard(self.path, reserve_bytes)
        self._lock = threading.Lock()
        self._sync_full = True
        self._owner_fd: int | None = None
        self._write_fd: int | None = None
        self._page_bytes: int | None = None
        self._low = False
        self.conn = self._open(self.path)

    def now(self) -> float:
        return self.clock.time()

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(path)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolUnavailable(f"spool {path}: cannot open ({reason(exc)})") from exc
        try:
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            require_json1(conn, path)
            migrate(conn, path)
        except (sqlite3.Error, SpoolUnavailable) as exc:
            conn.close()
            if isinstance(exc, SpoolUnavailable):
                raise
            raise SpoolUnavailable(f"spool {path}: cannot open ({reason(exc)})") from exc
        return conn

    def take_ownership(self) -> None:
        """Become the one process that delivers from this file, or raise.

        The worker requeues every in-flight claim at start, which is only right if no
        other process is sending from the same file: a second ``serve`` on one spool is
        refused here (an advisory lock, released when the process exits, even on SIGKILL).
        CLI commands (stats, list, replay, purge) never take it and may run alongside.
        """
        fd = self._open_lock_file(".lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolUnavailable(f"spool {self.path} is in use by another sidecar serve "
                                   "process (one process per spool; scale out with one spool "
                                   "per replica)") from exc
        self._owner_fd = fd

    @contextmanager
    def tx(self, *, durable: bool, ingest: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``begin immediate`` … ``commit`` under the lock; any failure rolls back.

        ``durable`` picks ``synchronous=FULL`` (an fsync per commit) for writes that back
        a 200 to Meta, ``NORMAL`` for bookkeeping that may be redone after a power cut.
        ``ingest`` writes (new events) are refused with ``SpoolUnavailable`` while the
        disk is low; every other write may use the reserve (``disk.py``).

        Writers in *other processes* (``serve --workers N``) queue on an flock first:
        SQLite's own busy handler polls with growing sleeps, which lets one process
        starve another under load; a kernel lock wakes the next writer as soon as the
        lock is free.
        """
        with self._lock, self._writer_lock():
            conn = self.conn
            try:
                if ingest:
                    if not self.disk.admit(lambda: self._spare_bytes(conn)):
                        raise SpoolUnavailable(DISK_FULL)
                else:
                    self._low_disk(not self.disk.reserve_held())
                if durable != self._sync_full:
                    conn.execute(f"pragma synchronous = {'full' if durable else 'normal'}")
                    self._sync_full = durable
                conn.execute("begin immediate")
            except sqlite3.Error as exc:
                raise SpoolUnavailable(f"spool unavailable ({reason(exc)})") from exc
            try:
                yield conn
                conn.execute("commit")
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
                        raise SpoolUnavailable(DISK_FULL) from exc
                    raise SpoolUnavailable(f"spool unavailable ({reason(exc)})") from exc
                raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (deferred transaction) under the lock."""
        with self._lock:
            conn = self.conn
            try:
                conn.execute("begin")
                try:
                    yield conn
                finally:
                    conn.execute("commit")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise SpoolUnavailable(f"spool unavailable ({reason(exc)})") from exc

    def check_writable(self) -> None:
        """Raise ``SpoolUnavailable`` unless an ingest write commits now.  A read passes
        on a read-only file, and in WAL mode while another writer holds the lock; this
        takes the same locks and the same disk admission as an ingest commit, checks the
        backlog against ``max_spool_events`` and commits a header write (no fsync), so it
        fails exactly when ingest would."""
        with self.tx(durable=False, ingest=True) as conn:
            (depth,) = conn.execute(
                "select coalesce(sum(n), 0) from state_counts"
                " where state in ('pending', 'in_flight')").fetchone()
            if depth >= self.max_spool_events:
                raise SpoolUnavailable("spool full")
            conn.execute(f"pragma user_version = {SCHEMA_VERSION}")

    def disk_full(self) -> bool:
        """Whether ingest is refused for disk space now (``spool stats``, ``/metrics``)."""
        with self._lock:
            return self.disk.is_full(self._spare_bytes(self.conn))

    def give_back(self) -> None:
        """Return the file's free pages to the filesystem (after a purge), in steps a
        nearly full disk can hold: each step's moved pages pass through the WAL, and a
        checkpoint lets the next step reuse it and truncates the file.  A file made
        before incremental auto-vacuum keeps its free pages, which SQLite reuses."""
        step = max(16, self.disk.reserve_bytes // 4 // max(1, self._page_size()))
        for _ in range(100_000):
            with self.tx(durable=False) as conn:
                (mode,) = conn.execute("pragma auto_vacuum").fetchone()
                (before,) = conn.execute("pragma freelist_count").fetchone()
                if mode != 2 or before == 0:
                    break
                conn.execute(f"pragma incremental_vacuum({int(step)})").fetchall()
                (after,) = conn.execute("pragma freelist_count").fetchone()
            self.checkpoint()
            if after >= before:
                break
        self.checkpoint()

    def checkpoint(self) -> None:
        with self._lock:
            try:
                self.conn.execute("pragma wal_checkpoint(passive)").fetchall()
            except sqlite3.Error as exc:
                raise SpoolUnavailable(f"spool unavailable ({reason(exc)})") from exc

    def with_room(self, op: Callable[[], T]) -> T:
        """Run a write that drains the spool (claims, settlements, purges); if the disk
        is full, release the reserve and run it once more (``disk.py``)."""
        try:
            return op()
        except SpoolUnavailable as exc:
            if exc.message != DISK_FULL or not self.disk.reserve_held():
                raise
        self.disk.release("a write that drains the spool found the disk full")
        return op()

    @property
    def disk_low(self) -> bool:
        """The reserve is released: drain in small transactions (``SQLiteSpool``)."""
        return not self.disk.reserve_held()

    def _low_disk(self, low: bool) -> None:
        # While the reserve is all the room there is, checkpoint the WAL well before it
        # would outgrow the reserve (SQLite's default waits for 1000 pages, 4 MB).
        if low != self._low:
            pages = max(16, self.disk.reserve_bytes // 4 // self._page_size()) if low \
                else _AUTOCHECKPOINT_PAGES
            self.conn.execute(f"pragma wal_autocheckpoint = {int(pages)}")
            self._low = low

    def _spare_bytes(self, conn: sqlite3.Connection) -> int:
        try:
            (pages,) = conn.execute("pragma freelist_count").fetchone()
        except sqlite3.Error:
            return 0
        return int(pages) * self._page_size()

    def _page_size(self) -> int:
        if self._page_bytes is None:
            (self._page_bytes,) = self.conn.execute("pragma page_size").fetchone()
        return int(self._page_bytes)

    def close(self) -> None:
        with self._lock:
            self.conn.close()
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # releases the ownership lock
            self._owner_fd = None
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    def _open_lock_file(self, suffix: str) -> int:
        lock_path = self.path.with_name(self.path.name + suffix)
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolUnavailable(f"spool {self.path}: cannot create {lock_path} "
                                   f"({reason(exc)})") from exc

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if self._write_fd is None:
            self._write_fd = self._open_lock_file(".writer")
        # A blocking wait, woken by the kernel the moment the lock is free.  It is bounded
        # where it matters: SpoolWriter.add answers 503 after its timeout, and readiness
        # checks have their own timeout.
        fcntl.flock(self._write_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._write_fd, fcntl.LOCK_UN)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("rollback")
    except sqlite3.Error:
        pass  # no transaction open (sqlite already rolled back on a fatal error)


def reason(exc: BaseException) -> str:
    """A short, safe description: the sqlite/OS message, without paths or SQL."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _create_private(path: Path) -> None:
    """Create the spool file for its owner only (it holds customers' messages, numbers
    and names), whatever the umask: SQLite gives its ``-wal`` and ``-shm`` files the
    database file's mode.  An existing file keeps the mode its operator gave it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
