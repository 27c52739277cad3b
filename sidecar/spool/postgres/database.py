"""One PostgreSQL spool: the connection pool, its transactions, and what happens when the
database is away.

Why these settings:

* **Durable adds.**  The 200 to Meta waits for the add's commit, so adds run with
  ``synchronous_commit`` at least ``on``.  Each new connection reads the effective value
  (a role or database default applies) and raises ``off`` to ``on``; a stronger value a
  DBA chose (``remote_apply``, synchronous standbys) is kept.
* **Bookkeeping** (claims, settlements, purges) commits with ``synchronous_commit =
  off``, set for its transaction only: a crash can lose the last few hundred
  milliseconds of it, and that only means an event is claimed or delivered again
  (at-least-once).  WAL is written in order, so a durable add never depends on an
  asynchronous commit before it.
* **Bounded waits.**  Connecting (``connect_timeout``), waiting for a pooled connection
  and each statement (``statement_timeout``) are bounded below the ingest's own timeout,
  so a request is answered 503 rather than held, and a session that stalls inside a
  transaction is ended by the server (``idle_in_transaction_session_timeout``).
* **Outages.**  A connection failure opens a short circuit: for a growing delay (50 ms
  to 2 s) every operation fails at once with ``SpoolUnavailable`` instead of each
  request waiting for its own connect to time out; then the next call tries again.
  The outage is logged once when it starts and once when it ends.  Nothing needs a
  restart: connections are made again on demand, so service resumes within that delay
  of the database's return.

Every driver error becomes ``SpoolUnavailable`` with a short reason that never holds
the URL's password; a failed transaction is rolled back, so nothing is half-written.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import SpoolUnavailable
from sidecar.spool.postgres.migrate import ensure_schema
from sidecar.spool.postgres.pool import Connection, Pool
from sidecar.spool.postgres.sql import DEPTH, NOTIFY_CHANNEL
from sidecar.spool.postgres.url import SpoolURL

__all__ = ["Database", "Outage", "is_outage", "CONNECT_TIMEOUT_S", "ACQUIRE_TIMEOUT_S",
           "STATEMENT_TIMEOUT_S"]

log = logging.getLogger("sidecar.spool")

CONNECT_TIMEOUT_S = 3  # libpq takes whole seconds
ACQUIRE_TIMEOUT_S = 2.0
# synchronous_commit values that acknowledge before the WAL is flushed where ``on`` says
# (a synchronous standby's included): a 200 to Meta waits for ``on`` at least.
_WEAKER_THAN_ON = frozenset({"off", "local", "remote_write"})
STATEMENT_TIMEOUT_S = 4.0  # below the ingest's 5 s (spool.writer.ADD_TIMEOUT_S)
IDLE_IN_TRANSACTION_TIMEOUT_S = 15.0
POOL_SIZE = 4  # per process: the group commit, the worker, /readyz and /metrics
_OUTAGE_DELAY_S = (0.05, 2.0)
# Several statements, no parameters: one simple-protocol round trip.
_NOTIFY = ("begin; set local synchronous_commit to off; "
           f"select pg_notify('{NOTIFY_CHANNEL}', ''); commit")
_WRITABLE = f"select ({DEPTH.strip()}), pg_current_xact_id()"
# SQLSTATEs that mean "the database is away": connection exceptions, authorization,
# insufficient resources (too many connections, disk full), and the server shutting
# down, crashed or still starting.  No SQLSTATE at all: libpq could not connect.
_OUTAGE_CLASSES = ("08", "28", "53")
_OUTAGE_STATES = ("57P01", "57P02", "57P03")


class Database:
    def __init__(self, url: SpoolURL, *, max_spool_events: int = 1_000_000,
                 dedup_retention_s: float = 604800.0, clock: Clock = SYSTEM_CLOCK,
                 must_exist: bool = False, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.max_spool_events = max_spool_events
        self.dedup_retention_s = dedup_retention_s
        self.clock = clock
        self.must_exist = must_exist
        # Whose leases these are: retries, dead letters and releases apply only to rows
        # this process still holds.
        self.owner = uuid.uuid4()
        self._pool = Pool(self.connect, size=pool_size)
        self._schema_ready = False
        self._lock = threading.Lock()
        self.outage = Outage(url.display)

    def now(self) -> float:
        return self.clock.time()

    # ------------------------------------------------------------------ connections

    def connect(self) -> Connection:
        """One connection outside the pool (migrations, LISTEN), with our settings."""
        conn: Connection = psycopg.connect(
            make_conninfo(self.url.conninfo, **self.url.defaults(CONNECT_TIMEOUT_S)),
            autocommit=True, cursor_factory=psycopg.RawCursor)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection (autocommit: one statement, one transaction)."""
        self.outage.check()
        try:
            self._ensure_schema()
            with self._pool.connection(timeout=ACQUIRE_TIMEOUT_S) as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        self.outage.recovered()

    @contextmanager
    def tx(self, *, durable: bool) -> Iterator[Connection]:
        """An explicit transaction; ``durable=False`` commits without waiting for the
        WAL flush (bookkeeping that may be redone after a crash)."""
        with self.connection() as conn, conn.transaction():
            if not durable:
                conn.execute("set local synchronous_commit to off")
            yield conn

    def _ensure_schema(self) -> None:
        """Once per process: the schema is there and this version (``must_exist``: the
        CLI, which never creates one), or created and migrated."""
        if self._schema_ready:
            return
        with self._lock:
            if not self._schema_ready:
                with self._pool.connection(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    ensure_schema(conn, self.url.display, create=not self.must_exist)
                self._schema_ready = True

    def _configure(self, conn: Connection) -> None:
        """Every new connection: bounded statements, durable commits by default (one
        round trip, two when ``synchronous_commit`` has to be raised)."""
        row = conn.execute(
            "select current_setting('synchronous_commit'),"
            " set_config('statement_timeout', $1, false),"
            " set_config('idle_in_transaction_session_timeout', $2, false)",
            (str(int(STATEMENT_TIMEOUT_S * 1000)),
             str(int(IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)))).fetchone()
        if row is not None and row[0] in _WEAKER_THAN_ON:
            conn.execute("set synchronous_commit to on")

    def _unavailable(self, exc: psycopg.Error) -> SpoolUnavailable:
        why = self.url.reason(exc)
        if is_outage(exc):
            self.outage.failed(why)
            self._pool.discard_idle()  # they most likely died with this one
        return SpoolUnavailable(f"spool unavailable ({why})")

    # ------------------------------------------------------------------ lifecycle

    def take_ownership(self) -> None:
        """A shared spool has many delivering processes, so nothing is refused here.
        What ``serve`` checks before it starts: the database answers, the schema is
        created or migrated (or refused as newer), and a write commits."""
        try:
            with self.connect() as conn:
                ensure_schema(conn, self.url.display, create=True)
                conn.execute("select pg_current_xact_id()")
        except psycopg.Error as exc:
            raise SpoolUnavailable(f"spool {self.url.display}: "
                                   f"{self.url.reason(exc)}") from exc
        self._schema_ready = True

    def check_writable(self) -> None:
        """Raise ``SpoolUnavailable`` unless an ingest would commit now: a transaction
        that takes a transaction id (it fails on a read-only server, a standby after
        failover or ``default_transaction_read_only``, as an add would) and finds the
        backlog below ``max_spool_events`` (at the bound, an add of any new event is
        refused)."""
        with self.tx(durable=False) as conn:
            row = conn.execute(_WRITABLE).fetchone()
        if row is None or int(row[0]) >= self.max_spool_events:
            raise SpoolUnavailable("spool full")

    def notify(self) -> None:
        """Tell every listening process that events were stored (``notify.py``): one
        round trip, a transaction that does not wait for its flush."""
        with self.connection() as conn:
            conn.execute(_NOTIFY)

    def close(self) -> None:
        self._pool.close()


def is_outage(exc: psycopg.Error) -> bool:
    """The database is away (no connection, shutting down, starting, refusing us), as
    opposed to one statement failing (a deadlock, a timeout, a constraint)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in _OUTAGE_CLASSES or state in _OUTAGE_STATES


class Outage:
    """Fail fast while the database is away, and say so once."""

    def __init__(self, display: str) -> None:
        self._display = display
        self._lock = threading.Lock()
        self._since: float | None = None
        self._retry_at = 0.0
        self._delay = _OUTAGE_DELAY_S[0]
        self._reason = ""

    def check(self) -> None:
        """Raise while the database is away; let one caller per delay try again."""
        with self._lock:
            if self._since is None:
                return
            now = time.monotonic()
            if now < self._retry_at:
                raise SpoolUnavailable(f"spool unavailable ({self._reason}; retrying)")
            self._retry_at = now + self._delay  # this caller probes; the others wait

    def failed(self, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since = now
                self._delay = _OUTAGE_DELAY_S[0]
                log.error("spool.unavailable", extra={"spool": self._display, "error": reason})
            else:
                self._delay = min(self._delay * 2, _OUTAGE_DELAY_S[1])
            self._reason = reason
            self._retry_at = now + self._delay

    def recovered(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is not None:
                log.warning("spool.available", extra={
                    "spool": self._display, "down_s": round(time.monotonic() - self._since, 3)})
                self._since = None
