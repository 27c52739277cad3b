"""What one delivery may cost on the shared spool, through a running sidecar on
PostgreSQL: the 0.4 MB body whose 3,000 messages share a 100 KB ``metadata`` and a
100 KB contact (test_delivery_bounds.py) is quarantined whole, and replayed grows the
spool's tables by a small multiple of its size, because shared parts are stored once per
batch."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from replica_group import Replicas, replicas, spool_cli  # noqa: F401  (fixture)
from test_delivery_bounds import MAX_GROWTH, amplification_body

from sidecar.normalize import DELIVERY_FIELD

TABLES = ("events", "parts", "quarantine", "spool_counts")


def spool_bytes(url: str) -> int:
    """The spool's tables with their indexes and TOAST, as PostgreSQL counts them."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select sum(pg_total_relation_size(t::regclass))::bigint"
                           " from unnest(%s::text[]) t", (list(TABLES),)).fetchone()
    assert row is not None
    return int(row[0])


def parts_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select count(*) from parts").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def hanging_upstream() -> Iterator[str]:
    """An upstream that accepts connections and never answers: the worker claims one
    window of events and waits, so the rows stay as stored while they are measured
    (an upstream that refuses would have every event claimed and retried over and over,
    and each update leaves a row version behind until vacuum)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/events"
    finally:
        sock.close()


def test_a_big_shared_part_is_quarantined_on_the_shared_spool_too(
        replicas: Replicas, pg_url: str, hanging_upstream: str) -> None:  # noqa: F811
    sidecar = replicas.start("a", upstream_url=hanging_upstream,
                             extra="limits: {max_events_per_delivery: 5000}\n")
    empty = spool_bytes(pg_url)
    body = amplification_body()
    r = sidecar.post(body)
    assert r.status_code == 200
    assert r.json() == {"status": "accepted", "events": 0, "quarantined": 1}
    assert spool_bytes(pg_url) - empty < MAX_GROWTH * len(body)


def test_a_delivery_quarantined_whole_and_replayed_stays_small(
        replicas: Replicas, pg_url: str, hanging_upstream: str) -> None:  # noqa: F811
    sidecar = replicas.start("a", upstream_url=hanging_upstream)
    empty = spool_bytes(pg_url)
    body = amplification_body()
    r = sidecar.post(body)
    assert r.status_code == 200
    assert r.json() == {"status": "accepted", "events": 0, "quarantined": 1}
    assert spool_bytes(pg_url) - empty < MAX_GROWTH * len(body)
    listed: dict[str, Any] = json.loads(
        spool_cli(sidecar.config_path, "list", "--quarantined", "--json").stdout)
    (row,) = listed["quarantined"]
    assert row["field"] == DELIVERY_FIELD
    replayed = spool_cli(sidecar.config_path, "replay", row["id"])
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    stats = json.loads(spool_cli(sidecar.config_path, "stats", "--json").stdout)
    assert stats["pending"] + stats["in_flight"] == 3000 and stats["quarantined"] == 0
    growth = spool_bytes(pg_url) - empty
    print(f"shared spool growth after the replay: {growth / len(body):.2f} x the body")
    assert growth < 2 * MAX_GROWTH * len(body), growth / len(body)
    assert parts_rows(pg_url) == 2
