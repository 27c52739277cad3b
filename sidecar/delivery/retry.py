"""When a failed delivery is tried again, and when it is given up: a value, no state.

Backoff is exponential with "equal jitter" (half fixed, half random), so retries of many
events spread out without ever retrying sooner than half the nominal delay.  A
``Retry-After`` from the upstream is a lower bound, capped at ``backoff_max_s``.  An event
is dead (kept as a dead letter, replayable) after ``max_attempts`` failed attempts or once
``max_age_s`` has passed since it was received (or last replayed).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]

_MAX_EXPONENT = 62  # 2**62 * any sane initial delay is far past any backoff_max_s


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``RetryPolicy(max_attempts=20, max_age_s=604800, backoff_initial_s=1, backoff_max_s=300)``"""

    max_attempts: int = 20
    max_age_s: float = 604800.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1.")
        if not (self.max_age_s > 0 and self.backoff_initial_s > 0):
            raise ValueError("max_age_s and backoff_initial_s must be greater than 0.")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s.")

    def next_delay(self, attempts: int, retry_after_s: float | None, *, jitter: float) -> float:
        """Seconds before the next try after the ``attempts``-th failed one (1-based);
        ``jitter`` is a uniform draw from [0, 1)."""
        exponent = min(max(attempts, 1) - 1, _MAX_EXPONENT)
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** exponent)
        delay = base / 2 + (base / 2) * jitter
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.backoff_max_s))
        return delay

    def is_dead(self, attempts: int, age_s: float) -> bool:
        """True when an event with ``attempts`` failed attempts, ``age_s`` old, is given up."""
        return attempts >= self.max_attempts or age_s >= self.max_age_s


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date, RFC 9110
    §10.2.3), or None when there is none or it is not one of those."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)
