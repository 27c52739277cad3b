"""Faults around the sidecar: an upstream that resets or stalls, a spool disk that fills
up or turns read-only.  Meta gets 200 only for what is stored, 503 otherwise, and
everything acknowledged arrives once the fault is gone, without a restart.

(A config reload with a broken file is covered in test_tls_reload.py.)
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SIGNING_SECRET, fill, free_port, mounted_tmpfs, wait_until
from sidecar.tools.samples import sample_delivery
from sidecar.secret import Secret
from sidecar.tools.sink import RecordingSink


def _delivery(tag: str, pad: int = 0) -> bytes:
    doc = sample_delivery("messages", unique=tag)
    if pad:  # an unknown key inside a known value is kept, so it makes a bigger event
        doc["entry"][0]["changes"][0]["value"]["messages"][0]["padding"] = "x" * pad
    return json.dumps(doc).encode()


def _metric(sidecar, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", sidecar.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0



class ResettingUpstream:
    """Accepts TCP connections and resets them at once (SO_LINGER 0 → RST)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.resets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            self.resets += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def upstream_port() -> int:
    return free_port()


@pytest.fixture
def resetting_upstream(upstream_port: int) -> Iterator[ResettingUpstream]:
    upstream = ResettingUpstream(upstream_port)
    try:
        yield upstream
    finally:
        upstream.stop()


def test_upstream_resetting_connections_then_recovering(start_sidecar, resetting_upstream,
                                                        upstream_port):
    sidecar = start_sidecar(upstream_url=f"http://127.0.0.1:{upstream_port}/events")
    bodies = [_delivery(f"reset-{n}") for n in range(3)]
    for body in bodies:
        started = time.monotonic()
        assert sidecar.post(body).status_code == 200  # stored; the upstream is not asked
        assert time.monotonic() - started < 2
    wait_until(lambda: resetting_upstream.resets >= 3, 10, "the sidecar never tried the upstream")
    assert _metric(sidecar, "sidecar_events_retried_total") >= 1
    assert _metric(sidecar, "sidecar_spool_oldest_age_seconds") > 0  # delivery lags
    resetting_upstream.stop()
    healthy = RecordingSink(port=upstream_port, signing_secret=Secret(SIGNING_SECRET)).start()
    try:
        events = healthy.wait_for(3, timeout_s=10)
        assert sorted(e["data"]["id"] for e in events) == sorted(
            json.loads(b)["entry"][0]["changes"][0]["value"]["messages"][0]["id"] for b in bodies)
        assert all(r.signature_ok for r in healthy.requests)
    finally:
        healthy.stop()
    wait_until(lambda: _metric(sidecar, "sidecar_spool_depth") == 0, 5, "spool not drained")
    assert _metric(sidecar, "sidecar_spool_oldest_age_seconds") == 0


def test_upstream_resets_in_direct_mode_are_503(start_sidecar, resetting_upstream,
                                                upstream_port):
    sidecar = start_sidecar(mode="direct",
                            upstream_url=f"http://127.0.0.1:{upstream_port}/events")
    r = sidecar.post(_delivery("direct-reset"))
    assert r.status_code == 503
    assert "Connection reset" not in r.text and "Traceback" not in r.text


def test_slow_upstream_does_not_slow_meta_down(start_sidecar, sink):
    sidecar = start_sidecar()  # upstream.timeout_s: 2
    sink.delay_s = 2.5  # every attempt times out
    bodies = [_delivery(f"slow-{n}") for n in range(3)]
    for body in bodies:
        started = time.monotonic()
        assert sidecar.post(body).status_code == 200
        assert time.monotonic() - started < 1.5
    wait_until(lambda: _metric(sidecar, "sidecar_events_retried_total") >= 1, 10,
          "timeouts were not retried")
    assert _metric(sidecar, "sidecar_events_delivered_total") == 0
    sink.delay_s = 0
    wait_until(lambda: _metric(sidecar, "sidecar_events_delivered_total") == 3, 15,
          "events not delivered after the upstream recovered")
    delivered = {e["id"] for e in sink.delivered()}
    assert len(delivered) == 3


def test_slow_upstream_in_direct_mode_answers_before_meta_gives_up(start_sidecar, sink):
    sidecar = start_sidecar(mode="direct")  # upstream.timeout_s: 2
    sink.delay_s = 1.0  # slow but within the timeout
    assert sidecar.post(_delivery("direct-slow-ok")).status_code == 200
    sink.delay_s = 3.0  # past the timeout
    started = time.monotonic()
    assert sidecar.post(_delivery("direct-slow-503")).status_code == 503
    assert time.monotonic() - started < 3.0


# ---------------------------------------------------------------------- spool disk


@pytest.fixture
def spool_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs where start_sidecar puts the spool (tmp_path/var).

    Requested before start_sidecar, so it is torn down after the sidecar stopped.
    """
    with mounted_tmpfs(tmp_path / "var", "8m") as folder:
        yield folder


def _post_until_503(sidecar, tag: str, limit: int = 40) -> tuple[list[bytes], int]:
    """Post big deliveries until one gets 503; the 200 ones, and the 503 count."""
    accepted: list[bytes] = []
    for n in range(limit):
        body = _delivery(f"{tag}-{n}", pad=200_000)
        status = sidecar.post(body).status_code
        if status == 503:
            return accepted, 1
        assert status == 200, status
        accepted.append(body)
    return accepted, 0


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
def test_spool_fault_is_503_and_recovers_without_restart(spool_tmpfs, start_sidecar, sink,
                                                         fault):
    sidecar = start_sidecar()
    assert sidecar.post(_delivery(f"{fault}-before")).status_code == 200
    sink.wait_for(1, timeout_s=10)
    sink.status = 503  # keep later events in the spool while the disk is broken

    if fault == "disk_full":
        filler = fill(spool_tmpfs)
        acked, refused = _post_until_503(sidecar, fault)
    else:
        ro = subprocess.run(["mount", "-o", "remount,ro", str(spool_tmpfs)],
                            capture_output=True, text=True, timeout=10)
        if ro.returncode != 0:
            # Linux refuses (EBUSY) while the spool holds files open for writing; a disk
            # that turns read-only under a live process (ext4 errors=remount-ro) needs a
            # device-mapper error target, which this environment does not offer.
            pytest.skip(f"cannot remount the spool's filesystem read-only under a live "
                        f"writer here: {ro.stderr.strip()}")
        acked, refused = _post_until_503(sidecar, fault, limit=3)
    assert refused == 1, "the broken spool never answered 503"
    # Every 503 is a real refusal: still refused on the next try, not a one-off.
    assert sidecar.post(_delivery(f"{fault}-refused-again", pad=200_000)).status_code == 503
    assert "Traceback" not in sidecar.log()
    assert sidecar.proc is not None and sidecar.proc.poll() is None

    # Fix the disk; no restart, no signal.
    if fault == "disk_full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(spool_tmpfs)], check=True,
                       capture_output=True, timeout=10)
    after = _delivery(f"{fault}-after")
    wait_until(lambda: sidecar.post(after).status_code == 200, 10, "no recovery after the fix")
    sink.status = 200
    expected = 2 + len(acked)  # before, every 200 while broken, after
    wait_until(lambda: len({e["id"] for e in sink.delivered()}) >= expected, 15,
          "acknowledged events were not all delivered")
    assert sidecar.proc.poll() is None
    assert sidecar.stop() == 0
