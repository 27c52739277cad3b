"""PostgreSQL stopped and restarted under load, with two replicas on it (one with
``--workers 2``): Meta gets 503 (never a 500) while it is away and ``/readyz`` says so,
``/metrics`` still answers, nothing needs a restart when it returns, every delivery
that got a 200 reaches the upstream, the outage is logged once per process rather than
per request, and the URL's password is in no log line."""

from __future__ import annotations

import collections
import signal
import threading
import time

import httpx
import psycopg

from replica_group import message_body, wait_until, wamids
from sidecar.tools.pgserver import PostgresServer

PASSWORD = "outage-pw-4f9c"


def ready(node) -> int:  # type: ignore[no-untyped-def]
    try:
        return httpx.get(node.admin_url + "/readyz", timeout=3).status_code
    except httpx.HTTPError:
        return 0


def test_postgres_stopped_and_restarted_under_load(replicas, sink, monkeypatch):
    server = PostgresServer(password=PASSWORD).start()  # ours to stop, by PID
    try:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("create database spool")
        monkeypatch.setenv("TEST_SPOOL_URL", server.url("spool"))
        nodes = [replicas.start("a"), replicas.start("b", workers=2)]
        outcomes: list[tuple[int, str, int]] = []  # (node, wamid, status)
        stop = threading.Event()

        def load(index: int) -> None:
            deadline = time.monotonic() + 90
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                body, wamid = message_body(f"outage-{index}-{n}")
                n += 1
                try:
                    status = nodes[index].post(body).status_code
                except httpx.HTTPError:
                    status = -1
                outcomes.append((index, wamid, status))

        threads = [threading.Thread(target=load, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: sum(s == 200 for _, _, s in outcomes) >= 20, 20, "load")
            server.stop(signal.SIGQUIT)  # immediate stop: recovery from WAL at restart
            stopped_at = len(outcomes)
            wait_until(lambda: {i for i, _, s in outcomes[stopped_at:] if s == 503} == {0, 1},
                       15, "503s from both replicas")
            wait_until(lambda: all(ready(n) == 503 for n in nodes), 10, "/readyz 503")
            assert all(httpx.get(n.admin_url + "/metrics").status_code == 200 for n in nodes)
            time.sleep(1.0)  # an outage of a few seconds under load
            server.start()
            restarted_at = len(outcomes)
            wait_until(lambda: {i for i, _, s in outcomes[restarted_at:] if s == 200} == {0, 1},
                       20, "200s again from both replicas, no restart")
            wait_until(lambda: all(ready(n) == 200 for n in nodes), 10, "/readyz 200")
        finally:
            stop.set()
            for t in threads:
                t.join(30)

        statuses = collections.Counter(s for _, _, s in outcomes)
        assert set(statuses) <= {200, 503}, statuses  # never a 500, nor a dropped answer
        accepted = {w for _, w, s in outcomes if s == 200}
        wait_until(lambda: accepted <= set(wamids(sink.delivered())), 30,
                   "every accepted delivery at the upstream")
        for node in nodes:
            log = node.log()
            assert PASSWORD not in log
            # Once per process and outage (b is a parent and two ingest processes).
            assert log.count('"spool.unavailable"') <= 3 * (node.workers + 1), log[-3000:]
            assert log.count('"spool.write_failed"') <= 3 * node.workers
            assert log.count('"delivery.unavailable"') <= 3 * node.workers
            assert log.count('"delivery.spool_error"') <= 3 * 4  # per operation
    finally:
        replicas.stop_all()
        server.cleanup()
