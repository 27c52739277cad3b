"""Logging setup: one JSON (or text) formatter on stderr, set up by the CLI.

Messages are fixed event names (``delivery.retry``); facts go in ``extra=`` fields.
Nothing logged here ever includes a body, a secret or a signature header; the one
thing that could carry a secret in a URL, ``hub.verify_token``, is redacted by
``redact_query``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Hashable
from datetime import datetime, timezone

__all__ = ["setup_logging", "redact_query", "JSONFormatter", "Throttle", "printable"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_TOKEN_IN_QUERY = re.compile(r"(hub\.verify_token=)[^&]*", re.IGNORECASE)


def redact_query(query: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1***", query)


class Throttle:
    """At most one log line per key per ``interval_s``, for lines that anyone on the
    network can cause (refused handshakes): the next line that passes says how many were
    left out.  Metrics count every one."""

    def __init__(self, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._skipped: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """None: leave this line out.  Otherwise log it, with this many left out before it."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exception"] = self.formatException(record.exc_info)
        return _printable_json(json.dumps(entry, default=str, ensure_ascii=False))


def _printable_json(text: str) -> str:
    # Values come from clients too (a certificate's subject, a path): JSON escapes the
    # C0 controls but passes DEL, the C1 controls (0x9b starts a terminal escape), bidi
    # overrides and U+2028 (a line break to some JSON-lines readers); escaped here.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={printable(str(v))}" for k, v in record.__dict__.items()
                          if k not in _STANDARD and not k.startswith("_"))
        base = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        return f"{base} {extras}".rstrip()


def printable(text: str) -> str:
    """``text`` with every character that does not print shown escaped (``\\n``,
    ``\\x1b``, ``\\u202e``): what came from outside (a client's bytes in a log line, a
    Graph error or a table cell the CLI prints) can neither forge a line nor drive the
    terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def setup_logging(level: str = "info", fmt: str = "json", *, proc: str | None = None) -> None:
    """``proc`` names the process in every line it logs (``serve --workers N``: the ingest
    processes log the same events as the parent, and an operator must tell them apart)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else _TextFormatter())
    if proc is not None:
        def tag(record: logging.LogRecord) -> bool:
            record.proc = proc
            return True
        handler.addFilter(tag)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO: noise on the delivery path, and URLs are ours to log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
