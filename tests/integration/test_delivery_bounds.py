"""What one delivery may cost, through the running sidecar: a 0.4 MB body whose 3,000
messages share a 100 KB ``metadata`` and a 100 KB contact is quarantined whole (past
``limits.max_events_per_delivery``, or, with that raised, for the bytes it would send
upstream), within a bounded memory, and replayed grows the spool file by a small multiple
of its size (shared parts are stored once); a body of 60,000 tiny changes is counted,
not built."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from sidecar.normalize import DELIVERY_FIELD
from sidecar.tools.samples import sample_delivery

MAX_GROWTH = 10  # × the body's size, on the real file


def amplification_body() -> bytes:
    metadata = {"display_phone_number": "15557654321", "phone_number_id": "112233445566778",
                "padding": "m" * 100_000}
    contact = {"profile": {"name": "c" * 100_000}, "wa_id": "1"}
    messages = [{"from": "1", "id": f"wamid.{i:05d}", "timestamp": "1775000000", "type": "text",
                 "text": {"body": "hi"}} for i in range(3000)]
    value = {"messaging_product": "whatsapp", "metadata": metadata, "contacts": [contact],
             "messages": messages}
    body = {"object": "whatsapp_business_account",
            "entry": [{"id": "109876543210987", "changes": [{"field": "messages", "value": value}]}]}
    return json.dumps(body, separators=(",", ":")).encode()


def spool_bytes(spool: Path) -> int:
    return sum(p.stat().st_size for p in (spool, spool.with_name(spool.name + "-wal"))
               if p.exists())


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def spool_cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "spool", *argv, "-c", str(config)],
                          capture_output=True, text=True, timeout=120)


def still_answering(sidecar: Any) -> None:
    r = sidecar.post(json.dumps(sample_delivery("security", unique=str(time.time()))).encode())
    assert r.status_code == 200 and r.json()["events"] == 1
    assert httpx.get(sidecar.admin_url + "/readyz", timeout=5).status_code == 200


def test_past_the_event_bound_a_delivery_is_quarantined_whole_and_replayable(
        start_sidecar, tmp_path: Path) -> None:
    spool = tmp_path / "var" / "spool.db"
    start_sidecar().stop()
    empty = spool_bytes(spool)
    sidecar = start_sidecar()
    body = amplification_body()
    r = sidecar.post(body)
    assert r.status_code == 200
    assert r.json() == {"status": "accepted", "events": 0, "quarantined": 1}
    still_answering(sidecar)
    assert sidecar.proc is not None and peak_rss_mb(sidecar.proc.pid) < 200
    sidecar.stop()
    assert spool_bytes(spool) - empty < MAX_GROWTH * len(body)

    listed = spool_cli(sidecar.config_path, "list", "--quarantined", "--json")
    (row,) = json.loads(listed.stdout)["quarantined"]
    assert row["field"] == DELIVERY_FIELD and "limits.max_events_per_delivery" in row["reason"]
    replayed = spool_cli(sidecar.config_path, "replay", row["id"])
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    stats = json.loads(spool_cli(sidecar.config_path, "stats", "--json").stdout)
    assert stats["pending"] == 3000 and stats["quarantined"] == 0
    # The replayed events too are stored with their shared parts once.
    assert spool_bytes(spool) - empty < 2 * MAX_GROWTH * len(body)


def test_a_big_shared_part_is_quarantined_for_what_it_would_send(start_sidecar,
                                                                 tmp_path: Path) -> None:
    # Within the event bound (raised here), the 3,000 messages would each carry the
    # 200 KB of shared parts upstream: 600 MB sent for a 0.4 MB body.  Stored once, they
    # are still quarantined whole, bounded in the spool and in memory.
    extra = "limits: {max_events_per_delivery: 5000}\n"
    spool = tmp_path / "var" / "spool.db"
    start_sidecar(extra=extra).stop()
    empty = spool_bytes(spool)
    sidecar = start_sidecar(extra=extra)
    body = amplification_body()
    r = sidecar.post(body)
    assert r.status_code == 200
    assert r.json() == {"status": "accepted", "events": 0, "quarantined": 1}
    still_answering(sidecar)
    assert sidecar.proc is not None and peak_rss_mb(sidecar.proc.pid) < 250
    sidecar.stop()
    assert spool_bytes(spool) - empty < MAX_GROWTH * len(body)
    (row,) = json.loads(spool_cli(sidecar.config_path, "list", "--quarantined",
                                  "--json").stdout)["quarantined"]
    assert row["field"] == DELIVERY_FIELD and "bytes upstream" in row["reason"]


def test_sixty_thousand_tiny_changes_are_quarantined_whole_quickly(start_sidecar) -> None:
    sidecar = start_sidecar()
    changes = [{"field": "security", "value": {"n": i}} for i in range(60_000)]
    body = json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "1", "changes": changes}]},
                      separators=(",", ":")).encode()
    assert 2_000_000 < len(body) < 3_145_728
    started = time.monotonic()
    r = sidecar.post(body)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert r.json() == {"status": "accepted", "events": 0, "quarantined": 1}
    assert elapsed < 5.0
    still_answering(sidecar)


def test_direct_mode_quarantines_past_the_bound_without_amplifying_memory(
        start_sidecar, sink) -> None:
    sidecar = start_sidecar(mode="direct")
    r = sidecar.post(amplification_body())
    assert r.status_code == 200
    assert r.json() == {"status": "accepted", "events": 0, "quarantined": 1}
    assert sidecar.proc is not None and peak_rss_mb(sidecar.proc.pid) < 200
    assert sink.requests == []
