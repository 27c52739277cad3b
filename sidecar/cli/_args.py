"""argparse value types shared by the command modules.

One copy, so every command rejects a bad ``--timeout-s`` or ``--limit`` with the same
words; argparse turns ``ArgumentTypeError`` into its usual one-line error and exit 2.
"""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_int", "positive_float"]


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--warn-days``, ``--max-retries``)."""
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    """An integer >= 1 (``--limit``)."""
    return _int_at_least(text, 1)


def positive_float(text: str) -> float:
    """A finite number > 0 (``--timeout-s``); rejects ``nan`` and ``inf``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}")
    return value
