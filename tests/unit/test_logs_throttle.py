"""``logs.Throttle``: at most one line per key per interval, then the count left out."""

from __future__ import annotations

from sidecar.logs import Throttle


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_the_count_left_out() -> None:
    clock = _Clock()
    throttle = Throttle(10.0, clock=clock)
    assert throttle.allow("no_certificate") == 0
    assert [throttle.allow("no_certificate") for _ in range(3)] == [None, None, None]
    assert throttle.allow("name_not_allowed") == 0  # keys are independent
    clock.now += 9.9
    assert throttle.allow("no_certificate") is None
    clock.now += 0.1
    assert throttle.allow("no_certificate") == 4  # the four left out since the last line
    assert throttle.allow("no_certificate") is None
    clock.now += 60
    assert throttle.allow("no_certificate") == 1
    assert throttle.allow("name_not_allowed") == 0
