"""Housekeeping deletes delivered events past dedup_retention_s, and dead letters and
quarantined changes past dead_retention_s; younger rows stay.  On both spools (the
PostgreSQL one against a real server, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.clock import ManualClock
from sidecar.config import load_config
from sidecar.events import Event, QuarantinedChange
from sidecar.server.roles import DeliveryRole
from sidecar.spool import PostgresSpool, Settlement, SQLiteSpool

DAY = 86400.0


def _event(n: int) -> Event:
    return Event(id=f"evt_{n}", type="whatsapp.account_update", field="account_update",
                 waba_id="w", phone_number_id=None, occurred_at="2027-01-15T08:00:00Z",
                 received_at="2027-01-15T08:00:00.000Z", data={"n": n})


def _quarantined(n: int) -> QuarantinedChange:
    return QuarantinedChange(id=f"q_{n}", waba_id="w", field="account_update", entry_time=1,
                             reason="x", value={"n": n})


@pytest.fixture(params=["sqlite", "postgres"])
def open_spool(request: pytest.FixtureRequest,
               tmp_path: Path) -> Callable[[ManualClock], Any]:
    def open_(clock: ManualClock) -> Any:
        if request.param == "sqlite":
            return SQLiteSpool(tmp_path / "spool.db", clock=clock, reserve_bytes=1 << 20,
                               dedup_retention_s=DAY)
        return PostgresSpool(request.getfixturevalue("pg_url"), clock=clock,
                             dedup_retention_s=DAY)
    return open_


async def test_housekeeping_applies_both_retentions(
        tmp_path: Path, open_spool: Callable[[ManualClock], Any]) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("""\
tls: {cert_file: s.pem, key_file: s.key, client_ca_files: [ca.pem]}
meta: {app_secrets: [one], verify_token: tok}
upstream: {url: "http://127.0.0.1:9000/events"}
delivery: {dedup_retention_s: 86400, max_age_s: 86400, dead_retention_s: 2592000}
""")
    config = load_config(path, env={})
    clock = ManualClock(time.time() - 40 * DAY)  # rows stored 40 days ago ...
    spool = open_spool(clock)
    spool.store.add_many([([_event(1), _event(2)], [_quarantined(1)])])
    spool.store.settle_and_claim(Settlement(), 2, lease_s=30)
    spool.store.settle(Settlement(delivered=["evt_1"], dead=[("evt_2", "x")]))
    clock.now = time.time() - 2 * DAY  # ... and these two days ago
    spool.store.add_many([([_event(3)], [_quarantined(2)])])
    spool.store.settle_and_claim(Settlement(), 1, lease_s=30)
    spool.store.settle(Settlement(dead=[("evt_3", "x")]))
    clock.now = time.time()
    fake = SimpleNamespace(live=SimpleNamespace(config=replace(config)), spool=spool)
    stop = asyncio.Event()
    task = asyncio.create_task(DeliveryRole._housekeeping(fake, stop))  # type: ignore[arg-type]
    for _ in range(100):
        await asyncio.sleep(0.02)
        if spool.admin.stats().dead == 1:
            break
    stop.set()
    await task
    stats = spool.admin.stats()
    assert (stats.delivered, stats.dead, stats.quarantined) == (0, 1, 1)
    assert [r.id for r in spool.admin.list_quarantined()] == ["q_2"]
    spool.close()
