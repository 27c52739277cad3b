"""The loop's exception handler: accept errors are logged throttled (anyone who can open
connections can cause them), refused handshakes and a stop's cancellations not at all."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl

import pytest

from sidecar.server import process


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(process, "_ACCEPT_ERRORS",
                        process.Throttle(10.0, clock=lambda: now[0]))
    loop = asyncio.new_event_loop()
    try:
        context = {"message": "socket.accept() out of system resource",
                   "exception": OSError(errno.EMFILE, "Too many open files")}
        with caplog.at_level(logging.DEBUG, logger="sidecar.server"):
            for _ in range(2000):
                process.quiet_tls_errors(loop, context)
            now[0] += 11
            process.quiet_tls_errors(loop, context)
    finally:
        loop.close()
    lines = [r for r in caplog.records if r.getMessage() == "listener.accept_failed"]
    assert len(lines) == 2
    assert lines[0].left_out == 0 and lines[1].left_out == 1999  # type: ignore[attr-defined]
    assert lines[0].error == "Too many open files"  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("exc", [ssl.SSLError(1, "boom"), ConnectionResetError(),
                                 asyncio.CancelledError()])
def test_expected_connection_ends_leave_no_error(exc: BaseException,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            process.quiet_tls_errors(loop, {"message": "Exception in callback", "exception": exc})
    finally:
        loop.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
