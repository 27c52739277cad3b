"""The SQLite spool's tables, and the migration that brings a file to this version.

``events`` is the queue and the dedup record at once; ``seen`` keeps a tombstone for a
purged delivered event until its dedup window ends; ``quarantine`` keeps changes that
could not become events; ``state_counts`` is kept by triggers so the depth and the stats
cost O(1) on a spool of a million rows, also when another process (the CLI) writes.
The file's ``user_version`` is the schema version; a newer one than this code knows is
refused rather than guessed at.

Version 2 stores what events of one change share once (``spool.parts``): an event's
``body`` is its own part and ``parts`` its holes (null: the body is the whole event, as
every row of a version-1 file is), and ``parts`` rows hold each shared value once, with
the number of events referring to them.  Triggers keep that count, and delete a part no
event refers to any more, so every way an event row goes (purge, a stale row replaced)
frees its parts without the code that deletes it knowing about them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from sidecar.errors import SpoolUnavailable

__all__ = ["SCHEMA_VERSION", "STATES", "migrate", "require_json1", "require_spool_file"]

SCHEMA_VERSION = 2
STATES = ("pending", "in_flight", "delivered", "dead")

_DDL = (
    """create table if not exists events (
        id text primary key,
        body text not null,
        state text not null check (state in ('pending', 'in_flight', 'delivered', 'dead')),
        attempts integer not null default 0,
        received_at real not null,
        next_attempt_at real,
        lease_until real,
        last_error text,
        delivered_at real,
        created_at real not null,
        replayed_at real,
        parts text
    )""",
    "create index if not exists events_due on events (state, next_attempt_at)",
    "create index if not exists events_received on events (state, received_at)",
    "create index if not exists events_delivered on events (state, delivered_at)",
    """create table if not exists seen (
        id text primary key,
        created_at real not null
    )""",
    "create index if not exists seen_created on seen (created_at)",
    """create table if not exists quarantine (
        id text primary key,
        waba_id text not null,
        field text not null,
        entry_time integer,
        reason text not null,
        value text not null,
        received_at real not null,
        replayed_at real
    )""",
    "create index if not exists quarantine_received on quarantine (received_at)",
    """create table if not exists state_counts (
        state text primary key,
        n integer not null
    )""",
    """create trigger if not exists events_count_insert after insert on events begin
           update state_counts set n = n + 1 where state = new.state;
       end""",
    """create trigger if not exists events_count_delete after delete on events begin
           update state_counts set n = n - 1 where state = old.state;
       end""",
    """create trigger if not exists events_count_update after update of state on events
       when old.state is not new.state begin
           update state_counts set n = n - 1 where state = old.state;
           update state_counts set n = n + 1 where state = new.state;
       end""",
    """create table if not exists parts (
        id text primary key,
        body text not null,
        refs integer not null default 0
    )""",
    # An event refers to a part once however many holes it has there ("in" counts each
    # part once), the same on insert and on delete.
    """create trigger if not exists events_parts_insert after insert on events
       when new.parts is not null begin
           update parts set refs = refs + 1 where id in
               (select json_extract(value, '$[1]') from json_each(new.parts));
       end""",
    """create trigger if not exists events_parts_delete after delete on events
       when old.parts is not null begin
           update parts set refs = refs - 1 where id in
               (select json_extract(value, '$[1]') from json_each(old.parts));
           delete from parts where refs <= 0 and id in
               (select json_extract(value, '$[1]') from json_each(old.parts));
       end""",
)
_SEED_COUNTS = "insert or ignore into state_counts (state, n) values (?, 0)"


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create what is missing and stamp the version, in one immediate transaction (two
    processes opening a new file at once do not race)."""
    conn.execute("begin immediate")
    try:
        (version,) = conn.execute("pragma user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SpoolUnavailable(f"spool {path}: schema version {version} is newer than "
                                   f"this sidecar ({SCHEMA_VERSION})")
        _add_parts_column(conn)
        for ddl in _DDL:
            conn.execute(ddl)
        conn.executemany(_SEED_COUNTS, [(s,) for s in STATES])
        if version < SCHEMA_VERSION:
            conn.execute(f"pragma user_version = {SCHEMA_VERSION}")
        conn.execute("commit")
    except BaseException:
        conn.execute("rollback")
        raise


def _add_parts_column(conn: sqlite3.Connection) -> None:
    """Version 1 → 2: a version-1 ``events`` table gains ``parts`` (null in every existing
    row: those bodies stay whole and are read as before).  An O(1) change in SQLite."""
    columns = {row[1] for row in conn.execute("pragma table_info(events)")}
    if columns and "parts" not in columns:
        conn.execute("alter table events add column parts text")


def require_spool_file(path: Path) -> None:
    """Raise ``SpoolUnavailable`` unless ``path`` is a spool file already: read-only, so
    that a command pointed at the wrong file (``-c`` of another deployment, another
    program's database) reports it instead of turning it into a spool."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise SpoolUnavailable(f"spool file {path} {what}")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5.0)
        try:
            tables = {name for (name,) in conn.execute(
                "select name from sqlite_master where type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise SpoolUnavailable(f"spool file {path} is not a SQLite database ({exc})") from None
    if not {"events", "quarantine", "state_counts"} <= tables:
        raise SpoolUnavailable(f"spool file {path} is not a sidecar spool (it has none of "
                               "the spool's tables; `sidecar serve` creates them)")


def require_json1(conn: sqlite3.Connection, path: Path) -> None:
    """The dedup lookup uses ``json_each`` (built into SQLite since 3.38, and compiled in
    by the usual distributions before): say so at start, not at the first commit."""
    try:
        conn.execute("select count(*) from json_each('[]')").fetchone()
    except sqlite3.OperationalError:
        raise SpoolUnavailable(
            f"spool {path}: this Python's SQLite {sqlite3.sqlite_version} has no JSON "
            "functions (json_each); use SQLite 3.38 or newer") from None
