"""A small connection pool for one process: at most ``size`` connections, made on demand
in the caller's thread, kept while healthy.

Why not ``psycopg_pool``: its connections are made by background workers whose retry
delay doubles without a bound short of ``reconnect_timeout``, so after a database
outage of a few minutes the first new connection may wait another minute.  Here a
connection is made when one is needed, bounded by ``connect_timeout``, and the pace of
attempts during an outage is the spool's own (``database.Outage``, at most 2 s).  A
connection is dropped when it comes back broken or inside a transaction, and when it
has been idle longer than ``max_idle_s`` (servers and proxies close idle sessions).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from sidecar.errors import SpoolUnavailable

__all__ = ["Pool", "Connection"]

Connection = psycopg.Connection[tuple[Any, ...]]


class Pool:
    def __init__(self, connect: Callable[[], Connection], *, size: int,
                 max_idle_s: float = 300.0) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[tuple[Connection, float]] = []
        self._lock = threading.Lock()
        self._max_idle_s = max_idle_s
        self._closed = False

    @contextmanager
    def connection(self, *, timeout: float) -> Iterator[Connection]:
        if not self._slots.acquire(timeout=timeout):
            raise SpoolUnavailable("spool busy (no free database connection)")
        try:
            conn = self._take() or self._connect()
            try:
                yield conn
            except BaseException:
                self._give_back(conn)
                raise
            self._give_back(conn)
        finally:
            self._slots.release()

    def discard_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.discard_idle()

    def _take(self) -> Connection | None:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise SpoolUnavailable("spool closed")
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < self._max_idle_s and not conn.closed:
                    return conn
                conn.close()
        return None

    def _give_back(self, conn: Connection) -> None:
        healthy = (not conn.closed
                   and conn.info.transaction_status == TransactionStatus.IDLE)
        with self._lock:
            if healthy and not self._closed:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()
