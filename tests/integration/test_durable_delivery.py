"""Durable delivery end to end: the real ``sidecar serve`` process, a real upstream HTTP
server, and the real SQLite spool file, read back from the test.

Every wait polls against a deadline; nothing sleeps for a fixed "long enough".  Each
test fails when the behaviour it names is missing: the expected ids are derived from
the bodies posted (a message event's ``data.id`` is its wamid), and the spool file is
opened read-only after the fact to show what is (and is not) stored.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import SIGNING_SECRET, free_port, wait_until
from sidecar.tools.samples import sample_delivery
from sidecar.secret import Secret
from sidecar.tools.sink import RecordingSink



# ---------------------------------------------------------------------- helpers


def message_body(token: str) -> tuple[bytes, str]:
    """A signed-ready ``messages`` delivery with one message; returns (body, wamid)."""
    delivery = sample_delivery("messages", unique=token)
    wamid = delivery["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    return json.dumps(delivery).encode(), wamid


def two_message_body(token: str) -> tuple[bytes, list[str]]:
    """One delivery whose change carries two messages (two events)."""
    delivery = sample_delivery("messages", unique=token)
    value = delivery["entry"][0]["changes"][0]["value"]
    second = dict(value["messages"][0], id=value["messages"][0]["id"] + ".second")
    value["messages"].append(second)
    return json.dumps(delivery).encode(), [m["id"] for m in value["messages"]]


def wamids(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["id"] for e in events if e["type"] == "whatsapp.message"]


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@contextmanager
def spool_db(path: Path) -> Iterator[sqlite3.Connection]:
    """The spool file opened read-only (WAL lets us read while the server writes)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        yield conn


def states(path: Path) -> dict[str, int]:
    with spool_db(path) as conn:
        return dict(conn.execute("select state, count(*) from events group by state"))


def spool_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "spool", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "spool.db"  # where the start_sidecar fixture puts it


@pytest.fixture
def late_upstream() -> Iterator[tuple[int, Callable[[], RecordingSink]]]:
    """A port where nothing listens yet, and a function that starts the upstream on it."""
    port = free_port()
    started: list[RecordingSink] = []

    def start() -> RecordingSink:
        sink = RecordingSink(port=port, signing_secret=Secret(SIGNING_SECRET)).start()
        started.append(sink)
        return sink

    try:
        yield port, start
    finally:
        for sink in started:
            sink.stop()


# ---------------------------------------------------------------------- outages

def test_upstream_down_then_up_every_event_arrives(start_sidecar, late_upstream, spool_path):
    port, start_upstream = late_upstream
    sidecar = start_sidecar(upstream_url=f"http://127.0.0.1:{port}/events")
    expected = []
    for i in range(5):
        body, wamid = message_body(f"down-{i}")
        r = sidecar.post(body)
        assert r.status_code == 200, r.text  # durably stored: Meta's 200 does not wait
        expected.append(wamid)
    # The worker really tried the dead upstream, and kept every event for later.
    wait_until(lambda: metric(sidecar.metrics(), "sidecar_events_retried_total") >= 5, 10,
               "failed attempts against the down upstream", sidecar.log)
    assert states(spool_path).get("delivered", 0) == 0

    upstream = start_upstream()
    events = wait_until(lambda: (e := upstream.delivered()) and len(e) >= 5 and e, 15,
                        "all 5 events at the upstream", sidecar.log)
    assert sorted(wamids(events)) == sorted(expected)
    assert len({e["id"] for e in events}) == 5
    assert all(r.signature_ok for r in upstream.requests)
    wait_until(lambda: states(spool_path) == {"delivered": 5}, 5, "5 delivered rows")


def test_upstream_500_and_timeouts_then_200_every_event_arrives(start_sidecar, sink,
                                                                spool_path):
    sidecar = start_sidecar()  # upstream.timeout_s is 2 in the test config
    sink.status = 500
    expected = []
    for i in range(3):
        body, wamid = message_body(f"flaky-{i}")
        assert sidecar.post(body).status_code == 200
        expected.append(wamid)
    wait_until(lambda: sum(r.answered == 500 for r in sink.requests) >= 6, 10,
               "two refused rounds", sidecar.log)

    # Now the upstream hangs past upstream.timeout_s (and would refuse anyway).
    sink.delay_s = 2.5
    wait_until(lambda: "upstream timed out" in sidecar.log(), 10, "an upstream timeout",
               sidecar.log)
    assert states(spool_path).get("delivered", 0) == 0

    sink.delay_s = 0.0
    sink.status = 200
    # The sink records a hung request after its delay with the status of that moment, so
    # one of the timed-out requests may also show up as "200"; the spool is the judge of
    # what the sidecar considers delivered.
    wait_until(lambda: states(spool_path) == {"delivered": 3}, 15, "3 delivered rows",
               sidecar.log)
    assert set(wamids(sink.delivered())) == set(expected)
    text = sidecar.metrics()
    assert metric(text, "sidecar_events_retried_total") >= 7  # 6 refusals + >= 1 timeout
    assert metric(text, "sidecar_events_delivered_total") == 3
    assert metric(text, "sidecar_events_dead_total") == 0


# ---------------------------------------------------------------------- crashes, shutdown

def test_sigkill_after_acknowledged_deliveries_loses_nothing(start_sidecar, late_upstream,
                                                             spool_path):
    port, start_upstream = late_upstream
    sidecar = start_sidecar(upstream_url=f"http://127.0.0.1:{port}/events")
    expected = []
    for i in range(8):
        body, wamid = message_body(f"kill-{i}")
        assert sidecar.post(body).status_code == 200
        expected.append(wamid)
    # Let the worker churn on the dead upstream (claims, failures, retries) and kill it
    # mid-flight: no drain, no release, whatever row was in_flight stays in_flight.
    wait_until(lambda: metric(sidecar.metrics(), "sidecar_events_retried_total") >= 8, 10,
               "failed attempts", sidecar.log)
    assert sidecar.stop(signal.SIGKILL) == -signal.SIGKILL
    assert sum(states(spool_path).values()) == 8  # all 8 acknowledged events are on disk

    upstream = start_upstream()
    sidecar.start()
    events = wait_until(lambda: (e := upstream.delivered()) and len(set(wamids(e))) >= 8
                        and e, 15, "all 8 events after the restart", sidecar.log)
    assert set(wamids(events)) == set(expected)
    wait_until(lambda: states(spool_path) == {"delivered": 8}, 5, "8 delivered rows")


def test_sigkill_while_a_send_is_in_flight_is_retried_after_restart(start_sidecar, sink,
                                                                    spool_path):
    sidecar = start_sidecar()
    sink.delay_s = 1.8  # under upstream.timeout_s: the send is simply slow
    body, wamid = message_body("inflight")
    assert sidecar.post(body).status_code == 200
    wait_until(lambda: states(spool_path).get("in_flight") == 1, 5, "the send in flight",
               sidecar.log)
    sidecar.stop(signal.SIGKILL)
    assert states(spool_path) == {"in_flight": 1}  # the crash left its claim behind

    sink.delay_s = 0.0
    sidecar.start()
    # A restarted process owns the spool: the dead process's claims are requeued at once
    # (not only when their lease runs out, which would be a minute later).
    wait_until(lambda: states(spool_path) == {"delivered": 1}, 10,
               "the orphaned in-flight event delivered after the restart", sidecar.log)
    assert wamid in wamids(sink.delivered())


def test_sigterm_drains_in_flight_sends_and_leaves_the_spool_clean(start_sidecar, sink,
                                                                   spool_path):
    sidecar = start_sidecar()
    sink.delay_s = 1.0  # slow, but inside upstream.timeout_s
    expected = []
    for i in range(12):  # each held for 1 s by the slow sink
        body, wamid = message_body(f"term-{i}")
        assert sidecar.post(body).status_code == 200
        expected.append(wamid)
    wait_until(lambda: states(spool_path).get("in_flight", 0) >= 1, 5, "sends in flight",
               sidecar.log)

    assert sidecar.stop(signal.SIGTERM) == 0
    after = states(spool_path)
    assert after.get("in_flight", 0) == 0, after
    assert sum(after.values()) == 12, after
    assert "server.stopped" in sidecar.log()
    with spool_db(spool_path) as conn:  # nothing marked delivered that the sink did not get
        delivered_rows = conn.execute("select count(*) from events where state = 'delivered'"
                                      ).fetchone()[0]
    assert delivered_rows <= len(sink.delivered())

    sink.delay_s = 0.0
    sidecar.start()
    wait_until(lambda: set(wamids(sink.delivered())) >= set(expected), 15,
               "all 12 events after the restart", sidecar.log)
    wait_until(lambda: states(spool_path) == {"delivered": 12}, 5, "12 delivered rows")


# ---------------------------------------------------------------------- dedup

def test_meta_redelivery_is_forwarded_once(start_sidecar, sink, spool_path):
    sidecar = start_sidecar()
    body_a, wamid_a = message_body("dup-a")
    body_b, wamids_b = two_message_body("dup-b")

    assert sidecar.post(body_a).status_code == 200
    assert sidecar.post(body_a).status_code == 200  # Meta redelivers the same body

    # The same delivery arriving on several connections at once (Meta retrying while the
    # first attempt is still open): every copy gets 200, one set of events is stored.
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        barrier.wait()
        codes.append(sidecar.post(body_b).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert codes == [200] * 8

    expected = [wamid_a, *wamids_b]
    wait_until(lambda: states(spool_path) == {"delivered": 3}, 10, "3 delivered rows",
               sidecar.log)
    # Nothing is pending or in flight any more, so nothing else can reach the sink.
    assert sorted(wamids(sink.delivered())) == sorted(expected)
    assert len(sink.requests) == 3
    assert metric(sidecar.metrics(), "sidecar_events_duplicate_total") == 1 + 7 * 2


# ---------------------------------------------------------------------- quarantine

def test_poison_value_is_quarantined_listed_and_replayable(start_sidecar, sink, spool_path):
    sidecar = start_sidecar()
    good = sample_delivery("account_update", unique="poison-good")["entry"][0]["changes"][0]
    bad = sample_delivery("message_template_status_update")["entry"][0]["changes"][0]
    bad["value"]["message_template_id"] = ["not-an-id"]  # breaks its schema (string or int)
    odd = sample_delivery("security")["entry"][0]["changes"][0]
    odd["value"]["event"] = 42  # breaks its schema (a string)
    body = json.dumps({"object": "whatsapp_business_account", "entry": [
        {"id": "102290129340398", "time": 1751247548, "changes": [good, bad, odd]}]}).encode()

    r = sidecar.post(body)
    assert r.status_code == 200, r.text  # odd changes block neither the rest nor Meta
    (event,) = sink.wait_for(1, timeout_s=10)
    assert event["type"] == "whatsapp.account_update"
    wait_until(lambda: states(spool_path) == {"delivered": 1}, 5, "the good event delivered")

    listed = spool_cli(sidecar.config_path, "list", "--quarantined", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["field"]: row for row in json.loads(listed.stdout)["quarantined"]}
    assert set(rows) == {"message_template_status_update", "security"}
    assert "message_template_id" in rows["message_template_status_update"]["reason"]
    assert all(row["replayed_at"] is None for row in rows.values())
    bad_id, odd_id = rows["message_template_status_update"]["id"], rows["security"]["id"]

    # Still broken: replay refuses both, and nothing is forwarded.
    again = spool_cli(sidecar.config_path, "replay", bad_id, odd_id)
    assert again.returncode == 1 and again.stdout.count("still invalid") == 2
    assert [e["type"] for e in sink.delivered()] == ["whatsapp.account_update"]

    # Forced: the change is forwarded whole, as Meta sent it, for the upstream to judge.
    forced = spool_cli(sidecar.config_path, "replay", "--force", bad_id)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    events = sink.wait_for(2, timeout_s=10)
    raw = [e for e in events if e["type"] == "whatsapp.message_template_status_update"]
    assert len(raw) == 1 and raw[0]["data"]["message_template_id"] == ["not-an-id"]

    # Replayable after the schema accepts it: the stored value is what gets re-checked,
    # so a newer sidecar whose schema accepts it (here: an operator's fix of the stored
    # value, standing in for that) makes the plain replay command succeed.
    assert sidecar.stop(signal.SIGTERM) == 0
    with closing(sqlite3.connect(spool_path)) as conn, conn:
        (text,) = conn.execute("select value from quarantine where id = ?", (odd_id,)).fetchone()
        value = json.loads(text)
        value["event"] = "PIN_CHANGED"
        conn.execute("update quarantine set value = ? where id = ?", (json.dumps(value), odd_id))

    replayed = spool_cli(sidecar.config_path, "replay", odd_id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"replayed {odd_id}" in replayed.stdout

    sidecar.start()
    events = sink.wait_for(3, timeout_s=10)
    fixed = [e for e in events if e["type"] == "whatsapp.security"]
    assert len(fixed) == 1 and fixed[0]["data"]["event"] == "PIN_CHANGED"
    listed = json.loads(spool_cli(sidecar.config_path, "list", "--quarantined", "--json").stdout)
    assert all(row["replayed_at"] is not None for row in listed["quarantined"])
    assert len(sink.delivered()) == 3


# ---------------------------------------------------------------------- dead letters

def test_dead_letters_are_listed_and_replayed_by_the_cli(start_sidecar, sink, spool_path):
    sidecar = start_sidecar(delivery_extra="max_attempts: 2")
    sink.status = 500
    expected = []
    for i in range(3):
        body, wamid = message_body(f"dead-{i}")
        assert sidecar.post(body).status_code == 200
        expected.append(wamid)
    wait_until(lambda: metric(sidecar.metrics(), "sidecar_events_dead_total") == 3, 10,
               "3 dead events", sidecar.log)
    assert sum(r.answered == 500 for r in sink.requests) == 6  # exactly max_attempts each
    # The counter moves when an outcome is known; the worker records outcomes in the spool
    # with its next claim, a few milliseconds later.
    wait_until(lambda: states(spool_path) == {"dead": 3}, 2, "3 dead rows", sidecar.log)

    listed = spool_cli(sidecar.config_path, "list", "--dead", "--json")
    assert listed.returncode == 0, listed.stderr
    dead = json.loads(listed.stdout)["events"]
    assert len(dead) == 3
    assert {(d["state"], d["attempts"], d["last_error"]) for d in dead} == \
        {("dead", 2, "upstream answered 500")}

    sink.status = 200
    replayed = spool_cli(sidecar.config_path, "replay", "--all-dead")
    assert replayed.returncode == 0 and "replayed 3 dead events" in replayed.stdout
    # The running worker picks the requeued events up at its next poll.
    wait_until(lambda: states(spool_path) == {"delivered": 3}, 10, "3 delivered rows",
               sidecar.log)
    assert sorted(wamids(sink.delivered())) == sorted(expected)
    assert json.loads(spool_cli(sidecar.config_path, "list", "--dead", "--json").stdout) == \
        {"events": []}


# ---------------------------------------------------------------------- back-pressure

def test_full_spool_answers_503_and_writes_nothing(start_sidecar, late_upstream, spool_path):
    port, start_upstream = late_upstream
    sidecar = start_sidecar(upstream_url=f"http://127.0.0.1:{port}/events",
                            delivery_extra="max_spool_events: 2")
    first, wamid_1 = message_body("full-1")
    assert sidecar.post(first).status_code == 200

    # Two events where only one fits: the whole delivery is refused, none of it stored.
    pair, _ = two_message_body("full-pair")
    r = sidecar.post(pair)
    assert r.status_code == 503
    assert "Traceback" not in r.text and str(spool_path) not in r.text
    with spool_db(spool_path) as conn:
        assert conn.execute("select count(*) from events").fetchone()[0] == 1

    second, wamid_2 = message_body("full-2")
    assert sidecar.post(second).status_code == 200
    assert sum(states(spool_path).values()) == 2  # pending/in flight: the spool is full

    third, wamid_3 = message_body("full-3")
    assert sidecar.post(third).status_code == 503
    assert sidecar.post(first).status_code == 200  # a repeat adds nothing, so it is fine
    with spool_db(spool_path) as conn:
        assert conn.execute("select count(*) from events").fetchone()[0] == 2
        assert conn.execute("select count(*) from quarantine").fetchone()[0] == 0

    # Meta retries later; once the upstream drains the spool the retry is accepted.
    upstream = start_upstream()
    wait_until(lambda: states(spool_path) == {"delivered": 2}, 15, "the spool drained",
               sidecar.log)
    assert sidecar.post(third).status_code == 200
    wait_until(lambda: set(wamids(upstream.delivered())) == {wamid_1, wamid_2, wamid_3}, 10,
               "the three events", sidecar.log)


def test_in_direct_mode_a_replayed_event_is_delivered(start_sidecar, sink, spool_path):
    # Direct mode sends while Meta waits; what `spool replay` puts back (a quarantined
    # change fixed by an upgrade, a delivered event resent with --force) has no request
    # waiting for it, and is sent by the worker all the same.
    sidecar = start_sidecar(mode="direct")
    r = sidecar.post(json.dumps(sample_delivery("security", unique="direct-replay")).encode())
    assert r.status_code == 200
    (first,) = sink.wait_for(1, timeout_s=10)
    replayed = spool_cli(sidecar.config_path, "replay", first["id"], "--force")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    again = sink.wait_for(2, timeout_s=15)
    assert [e["id"] for e in again] == [first["id"], first["id"]]
    wait_until(lambda: states(spool_path) == {"delivered": 1}, timeout_s=10)
