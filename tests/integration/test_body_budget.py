"""A burst of large deliveries (a retry storm after an outage: many connections, each
with a body near Meta's 3 MB maximum) against `serve --workers 2` with a small
`limits.max_inflight_body_bytes`: every delivery is stored (200) or refused before its
body is read (503), none is lost, each ingest process's memory stays under its share of
the budget plus a fixed margin, and comes back after the burst."""

from __future__ import annotations

import http.client
import json
import re
import threading

from conftest import APP_SECRET, wait_until
from sidecar.checks.signature import sign
from sidecar.secret import Secret
from sidecar.tools.samples import sample_delivery
from test_workers import _children

MiB = 1 << 20
BUDGET = 32 * MiB  # 16 MiB per ingest process
MARGIN = 64 * MiB  # what parsing, storing and the TLS connections add on top
BURST = 60
BODY_SIZE = 3_000_000


def _memory(pid: int) -> dict[str, int]:
    facts = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            if key in ("VmRSS", "VmHWM"):
                facts[key] = int(value.split()[0]) * 1024
    return facts


def _body(tag: str) -> bytes:
    doc = sample_delivery("messages", unique=tag)
    doc["entry"][0]["changes"][0]["value"]["messages"][0]["padding"] = "x" * BODY_SIZE
    return json.dumps(doc).encode()


def _post(sidecar, body: bytes) -> int | str:
    conn = http.client.HTTPSConnection("127.0.0.1", sidecar.port, timeout=60,
                                       context=sidecar.pki.client_context(sidecar.pki.meta_client))
    try:
        conn.request("POST", sidecar.path, body=body, headers={
            "content-type": "application/json",
            "x-hub-signature-256": sign(Secret(APP_SECRET), body)})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


def test_a_burst_of_large_bodies_stays_within_the_budget(start_sidecar, sink):
    sidecar = start_sidecar(workers=2, extra=f"limits: {{max_inflight_body_bytes: {BUDGET}}}\n")
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2, what="two ingest processes")
    children = _children(sidecar.proc.pid)
    for n in range(4):  # warm both processes up with one large body each (or so)
        assert _post(sidecar, _body(f"warm-{n}")) == 200
    before = {pid: _memory(pid)["VmRSS"] for pid in children}

    bodies = [_body(f"burst-{n}") for n in range(BURST)]
    statuses: list[int | str] = [0] * BURST

    def send(n: int) -> None:
        statuses[n] = _post(sidecar, bodies[n])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(statuses) <= {200, 503}, statuses
    refused = [n for n, s in enumerate(statuses) if s == 503]
    assert refused and len(refused) < BURST, statuses
    for pid in children:
        peak = _memory(pid)["VmHWM"] - before[pid]
        assert peak < BUDGET // 2 + MARGIN, f"ingest {pid} grew {peak / MiB:.0f} MiB"

    # The memory comes back once the burst is over.
    def returned() -> bool:
        return all(_memory(pid)["VmRSS"] - before[pid] < 24 * MiB for pid in children)
    wait_until(returned, 10, "the memory to come back", log=lambda: str({
        pid: (_memory(pid)["VmRSS"] - before[pid]) // MiB for pid in children}))

    metrics = sidecar.metrics()
    assert f'sidecar_requests_total{{outcome="overloaded"}} {float(len(refused))}' in metrics
    assert re.search(r"^sidecar_inflight_body_bytes 0\.0$", metrics, re.MULTILINE)
    # Nothing is lost: Meta retries every 503, and then every delivery arrives.
    for n in refused:
        assert _post(sidecar, bodies[n]) == 200
    delivered = sink.wait_for(BURST + 4, timeout_s=60)
    assert len({e["id"] for e in delivered}) == BURST + 4
