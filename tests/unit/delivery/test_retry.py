"""RetryPolicy: exponential backoff with equal jitter, Retry-After as a floor, when an
event is given up; and the one Retry-After parser."""

from __future__ import annotations

import pytest

from sidecar.delivery.retry import RetryPolicy, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999])
def test_next_delay_is_exponential_with_equal_jitter(jitter: float) -> None:
    policy = RetryPolicy(backoff_initial_s=2.0, backoff_max_s=60.0)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (500, 60.0)]:
        delay = policy.next_delay(attempt, None, jitter=jitter)
        assert delay == base / 2 + (base / 2) * jitter
        assert base / 2 <= delay <= base


def test_next_delay_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_max_s=300.0)
    assert policy.next_delay(1, 120.0, jitter=0.5) == 120.0
    assert policy.next_delay(1, 10_000.0, jitter=0.5) == 300.0
    # A short Retry-After does not shorten the backoff.
    assert policy.next_delay(1, 0.0, jitter=0.5) == policy.next_delay(1, None, jitter=0.5)


def test_is_dead_after_max_attempts_or_max_age() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_s=100.0)
    assert not policy.is_dead(2, 99.0)
    assert policy.is_dead(3, 0.0)
    assert policy.is_dead(1, 100.0)


@pytest.mark.parametrize("kwargs", [
    {"max_attempts": 0}, {"max_age_s": 0}, {"backoff_initial_s": 0},
    {"backoff_initial_s": 10, "backoff_max_s": 5},
])
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("12", 12.0), (" 3 ", 3.0), ("\u00b2", None), ("soon", None),
    ("-5", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected
