"""Bring a database's spool schema to this version, or refuse it.

One transaction under ``pg_advisory_xact_lock``: replicas starting at once take turns,
and the second finds the work done.  PostgreSQL's DDL is transactional, so a migration
that fails part way leaves the previous version whole.  A database whose version is
newer than this code is refused with one line rather than guessed at; the CLI
(``create=False``) never creates or migrates anything.
"""

from __future__ import annotations

from typing import Any

import psycopg

from sidecar.errors import SpoolUnavailable
from sidecar.spool.postgres import schema

__all__ = ["ensure_schema", "MIGRATIONS"]

# version -> the statements that bring version - 1 to it
MIGRATIONS: dict[int, tuple[str, ...]] = {1: schema.V1_DDL, 2: schema.V2_DDL}


def ensure_schema(conn: psycopg.Connection[tuple[Any, ...]], display: str, *,
                  create: bool) -> int:
    """The schema version found (after migrating, with ``create``)."""
    with conn.transaction():
        if create:
            # A migration reads whole tables (index builds), which may take longer on a
            # large spool than an ordinary statement may; replicas starting meanwhile
            # wait for its lock as long as it takes, not a statement's time.
            conn.execute("set local statement_timeout = 0")
            conn.execute("select pg_advisory_xact_lock($1)", (schema.MIGRATION_LOCK,))
        version = _version(conn)
        if version > schema.SCHEMA_VERSION:
            raise SpoolUnavailable(
                f"spool {display}: schema version {version} is newer than this sidecar "
                f"({schema.SCHEMA_VERSION}); upgrade the sidecar")
        if version == schema.SCHEMA_VERSION:
            return version
        if not create:
            what = "no sidecar spool" if version == 0 else f"spool schema version {version}"
            raise SpoolUnavailable(f"spool {display}: the database has {what}; "
                                   "`sidecar serve` creates or migrates it")
        for step in range(version + 1, schema.SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"create table if not exists {schema.SCHEMA_TABLE}"
                     " (version integer not null)")
        conn.execute(f"delete from {schema.SCHEMA_TABLE}")
        conn.execute(f"insert into {schema.SCHEMA_TABLE} (version) values ($1)",
                     (schema.SCHEMA_VERSION,))
    return schema.SCHEMA_VERSION


def _version(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    row = conn.execute("select to_regclass($1::text)", (schema.SCHEMA_TABLE,)).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(f"select max(version) from {schema.SCHEMA_TABLE}").fetchone()
    return int(found[0]) if found is not None and found[0] is not None else 0
