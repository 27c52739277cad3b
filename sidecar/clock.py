"""Time, as a parameter: the wall clock and the monotonic clock behind one small
``Clock`` protocol, and the one way a loop waits for a stop or a timeout.

Anything that schedules by time (the delivery worker's retries and sync gaps, the
spool's dedup window) takes a ``Clock`` so that tests can drive it exactly (huey's
``Worker.loop(now=...)``); ``SYSTEM_CLOCK`` is the real one."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "SYSTEM_CLOCK", "ManualClock", "wait_for_event"]


class Clock(Protocol):
    def time(self) -> float:
        """Unix seconds (what is stored: receipt times, retry times)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (intervals within one process)."""
        ...


class SystemClock:
    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """Wall time set by hand (``clock.now += 60``), for tests and replays of the past.
    ``monotonic`` stays the real one: asyncio's own timers run on it."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


async def wait_for_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` has passed; True when it is set."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
