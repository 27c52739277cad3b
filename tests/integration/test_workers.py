"""`serve --workers 2`: two ingest processes on one socket, the parent delivering.

What must hold with several processes: every accepted event is delivered once (dedup
across processes), metrics add up across processes, SIGHUP reaches every process, an
ingest process that dies is replaced, and SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
import trustme

from conftest import META_CN, VERIFY_TOKEN, wait_until
from sidecar.tools.samples import sample_delivery

PARAMS = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "3"}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
                if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                    found.append(int(entry))
    return found



@pytest.fixture
def sidecar(start_sidecar):
    return start_sidecar(workers=2)


def test_two_ingest_processes_deliver_everything_once(sidecar, sink):
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2)
    bodies = [json.dumps(sample_delivery("messages", unique=f"w{i}")).encode() for i in range(40)]
    statuses: list[int] = []

    def post_all() -> None:
        # New connections each time, so both processes take some.
        for body in bodies:
            statuses.append(sidecar.post(body).status_code)

    threads = [threading.Thread(target=post_all) for _ in range(3)]  # every body 3 times
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 120
    delivered = sink.wait_for(40, timeout_s=15)
    time.sleep(0.5)
    assert len(sink.delivered()) == 40  # one delivery per event, across processes
    assert len({e["id"] for e in delivered}) == 40
    metrics = sidecar.metrics()
    assert 'sidecar_requests_total{outcome="accepted"} 120.0' in metrics
    assert "sidecar_events_spooled_total 40.0" in metrics
    assert "sidecar_events_duplicate_total 80.0" in metrics


def test_sighup_reaches_every_ingest_process(sidecar, pki):
    # A long interval, so only the forwarded SIGHUP can explain a quick reload.
    sidecar.config_path.write_text(sidecar.config_path.read_text().replace(
        "reload_interval_s: 0.5", "reload_interval_s: 3600"))
    sidecar.stop()
    sidecar.start()
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2)
    new_ca = trustme.CA()
    new_client = pki.client_pair("hup2", new_ca, common_name=META_CN)
    (pki.dir / "client-ca.pem.new").write_bytes(new_ca.cert_pem.bytes())
    os.replace(pki.dir / "client-ca.pem.new", pki.dir / "client-ca.pem")
    sidecar.send_signal(signal.SIGHUP)

    def all_new() -> bool:
        # Several fresh connections: both processes must have reloaded.
        try:
            for _ in range(6):
                with sidecar.client(new_client) as c:
                    if c.get(sidecar.url, params=PARAMS).status_code != 200:
                        return False
            return True
        except httpx.HTTPError:
            return False

    wait_until(all_new, timeout_s=10)
    with pytest.raises(httpx.HTTPError):
        with sidecar.client(pki.meta_client) as c:
            c.get(sidecar.url, params=PARAMS)


def test_each_process_names_itself_in_its_log_lines(sidecar):
    # Every process reloads and logs the same events: which one failed must be plain.
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2)
    good = sidecar.config_path.read_text()
    sidecar.config_path.write_text(good + "meta:\n  verify_token: again\n")  # a key twice
    sidecar.send_signal(signal.SIGHUP)

    def failed() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in sidecar.log().splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line["event"] == "config.reload_failed"]

    wait_until(lambda: len(failed()) >= 3)
    assert sorted(str(line.get("proc")) for line in failed()) == [
        "None", "ingest-0", "ingest-1"]  # the parent's lines carry no proc
    sidecar.config_path.write_text(good)


def test_a_dead_ingest_process_is_replaced(sidecar, sink):
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2)
    victim = _children(sidecar.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2
                 and victim not in _children(sidecar.proc.pid), timeout_s=15)
    wait_until(lambda: httpx.get(sidecar.admin_url + "/readyz").status_code == 200)
    body = json.dumps(sample_delivery("security", unique="after-kill")).encode()
    assert sidecar.post(body).status_code == 200
    assert len(sink.wait_for(1, timeout_s=10)) == 1


def test_sigterm_stops_every_process(sidecar):
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2)
    children = _children(sidecar.proc.pid)
    assert sidecar.stop(signal.SIGTERM) == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_ingest_processes_exit_when_the_parent_is_killed(sidecar):
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2)
    children = _children(sidecar.proc.pid)
    sidecar.stop(signal.SIGKILL)

    def gone(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_until(lambda: all(gone(pid) for pid in children), timeout_s=20)
