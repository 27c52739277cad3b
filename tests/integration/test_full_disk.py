"""The spool's filesystem fills up (a small tmpfs, filled by another writer) while the
upstream is down and a backlog waits:

* ingest answers 503 (Meta retries) and `/readyz` is 503, exactly while it lasts;
* the backlog still drains to the upstream once it is back, disk still full;
* `sidecar spool purge` works on the full disk and frees space;
* the sidecar recovers by itself, no restart, no signal;
* one log line for the episode, not an ERROR line per request.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import fill, mounted_tmpfs, wait_until

from sidecar.tools.samples import sample_delivery

MiB = 1 << 20
RESERVE = 2 * MiB
BACKLOG = 25


def _delivery(tag: str, pad: int = 200_000) -> bytes:
    doc = sample_delivery("messages", unique=tag)
    doc["entry"][0]["changes"][0]["value"]["messages"][0]["padding"] = "x" * pad
    return json.dumps(doc).encode()


def _wait(predicate, timeout_s: float, what, sidecar=None) -> None:
    """``wait_until``, with the sidecar's log (retries left out) when it fails."""
    log = (lambda: "\n".join(line for line in sidecar.log().splitlines()
                             if "delivery.retry" not in line)) if sidecar else None
    wait_until(predicate, timeout_s, what, log=log)


def _ready(sidecar) -> httpx.Response:
    return httpx.get(sidecar.admin_url + "/readyz", timeout=5)


def _metric(sidecar, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", sidecar.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else -1.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs where start_sidecar puts the spool (tmp_path/var); requested
    before start_sidecar, so it is unmounted after the sidecar stopped."""
    with mounted_tmpfs(tmp_path / "var", "24m") as folder:
        yield folder


@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_refuses_ingest_drains_the_backlog_and_recovers(small_disk, start_sidecar,
                                                                  sink, workers):
    sidecar = start_sidecar(workers=workers, delivery_extra=f"spool_reserve_bytes: {RESERVE}")
    assert (small_disk / "spool.db.reserve").stat().st_size == RESERVE
    sink.status = 503  # the upstream is down: a backlog builds up
    for n in range(BACKLOG):
        assert sidecar.post(_delivery(f"backlog-{n}")).status_code == 200
    filler = fill(small_disk)

    # Full: every ingest is 503, and /readyz says so at the same time.
    for n in range(10):
        assert sidecar.post(_delivery(f"refused-{n}", pad=100)).status_code == 503
        ready = _ready(sidecar)
        assert ready.status_code == 503
        assert ready.json()["failing"] == {"spool": "spool disk full"}
    assert _metric(sidecar, "sidecar_spool_disk_full") == 1

    # The upstream is back: the whole backlog drains while the disk is still full.
    sink.status = 200
    _wait(lambda: len({e["id"] for e in sink.delivered()}) >= BACKLOG, 30,
          "the backlog did not drain on a full disk", sidecar)
    _wait(lambda: _metric(sidecar, "sidecar_spool_depth") == 0, 10, "depth not 0")
    assert sidecar.post(_delivery("still-full", pad=100)).status_code == 503
    assert _ready(sidecar).status_code == 503

    # An operator purges on the full disk: it works, frees space, and the sidecar
    # recovers by itself (the filler is still there).
    purge = subprocess.run([sys.executable, "-m", "sidecar", "spool", "purge", "-c",
                            str(sidecar.config_path)], capture_output=True, text=True,
                           timeout=60)
    assert purge.returncode == 0, purge.stderr
    assert f"purged {BACKLOG} delivered events" in purge.stdout
    after = _delivery("after-purge", pad=100)
    _wait(lambda: sidecar.post(after).status_code == 200, 15, "no recovery after the purge")
    assert _ready(sidecar).status_code == 200
    assert _metric(sidecar, "sidecar_spool_disk_full") == 0
    assert (small_disk / "spool.db.reserve").stat().st_size == RESERVE
    _wait(lambda: "after-purge" in json.dumps(sink.delivered()), 10, "not delivered")
    filler.unlink()

    log = sidecar.log()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if '"level": "error"' in line]
    # One line per process that saw it (the ingest processes, and the parent's /readyz).
    assert {json.loads(e)["event"] for e in errors} == {"spool.disk_full"}, errors
    assert len(errors) <= workers + 1, errors
    # Warnings for the refused requests are throttled, not one per request.
    assert log.count("delivery.unavailable") <= 2 * workers
    assert sidecar.proc.poll() is None and sidecar.stop() == 0
