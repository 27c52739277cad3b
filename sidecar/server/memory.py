"""Giving a burst's memory back to the OS once it is over (glibc's malloc).

After 300 connections each sent a 3 MB body, a process held 1.1 GB, and still 1.08 GB
after they had closed: glibc keeps freed memory for reuse.  Two of its habits do that:

* its mmap threshold is dynamic: once a large block (a body) is freed, blocks up to that
  size come from the heap instead of their own mapping, and a heap gives memory back
  only from its top, which a single live object pins;
* every thread that allocates gets its own arena (up to 8 per core), each keeping its
  own free memory (the spool's blocking calls run in worker threads).

So each serving process fixes the mmap threshold (large blocks are mapped and unmapped
whole) and caps the arenas, and ``trim`` collects the burst's closed connections and
returns free heap pages (``malloc_trim``) a moment after a burst has drained
(``BodyBudget``'s ``on_drained``: the last answers are still being sent then).  Measured in
tests/integration/test_body_budget.py.  Without glibc (musl, macOS) all of this is a
no-op.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging

__all__ = ["tune_malloc", "trim", "TrimAfterBurst"]

log = logging.getLogger("sidecar.server")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's own default, kept fixed instead of growing
TRIM_THRESHOLD = 1 << 20
ARENA_MAX = 2

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt  # noqa: B018  (absent outside glibc)
            libc.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def tune_malloc() -> bool:
    """Fix the mmap threshold and cap the arenas in this process; True when applied."""
    libc = _glibc()
    if libc is None:
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.warning("memory.mallopt_failed")
    return ok


def trim() -> None:
    """Collect cyclic garbage, then return free heap memory to the OS (a few
    milliseconds on a large heap).  The collection comes first: a closed connection's
    transport, protocol and TLS buffers form a cycle that only the collector frees."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class TrimAfterBurst:
    """``BodyBudget``'s ``on_drained``: ``trim`` once the last answers of a burst are out
    and its connections closed (``delay_s`` after the budget went idle, one trim per quiet
    spell), in a worker thread so the event loop goes on."""

    def __init__(self, delay_s: float = 1.0) -> None:
        self._delay_s = delay_s
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._delay_s, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        loop.run_in_executor(None, trim)
