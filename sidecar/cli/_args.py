"""argparse value types shared by the command modules.

One copy, so every command rejects a bad ``--timeout-s`` or ``--limit`` with the same
words; argparse turns ``ArgumentTypeError`` into its usual one-line error and exit 2.
Every value has an upper bound too: a number no setting needs would otherwise reach
SQLite, ``timedelta`` or a socket timeout and end in a traceback (``OverflowError``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from sidecar.config.loader import http_url_problem

__all__ = ["non_negative_int", "positive_int", "positive_float", "bounded_int", "graph_url",
           "https_url", "MAX_INT", "MAX_SECONDS"]

MAX_INT = 1_000_000_000  # far above any count a flag needs; fits SQLite and C ints
MAX_SECONDS = 86_400.0  # a timeout longer than a day is a typo


def non_negative_int(text: str) -> int:
    """An integer from 0 to ``MAX_INT`` (``--warn-days``, ``--max-retries``)."""
    return _int_in(text, 0, MAX_INT)


def positive_int(text: str) -> int:
    """An integer from 1 to ``MAX_INT`` (``--limit``)."""
    return _int_in(text, 1, MAX_INT)


def bounded_int(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type for an integer from ``minimum`` to ``maximum``."""
    def parse(text: str) -> int:
        return _int_in(text, minimum, maximum)
    return parse


def positive_float(text: str) -> float:
    """A finite number > 0 and at most ``MAX_SECONDS`` (``--timeout-s``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS:g}")
    return value


def graph_url(text: str) -> str:
    """``--graph-url``: checked as ``graph.base_url`` is (the bearer token goes there)."""
    problem = http_url_problem(text, secret_in_requests=True)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text.rstrip("/")


def https_url(text: str) -> str:
    """Likewise, https only (``--override-callback-uri``: Meta calls only https)."""
    problem = http_url_problem(text, schemes=("https",))
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _int_in(text: str, minimum: int, maximum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}")
    return value
