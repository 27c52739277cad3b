"""A log line is one line, whatever a client put in its values, in both formats."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.logs import JSONFormatter, setup_logging

HOSTILE = "e\nerror FORGED\x1b[31m\u202e\u2028\x9b31m\x7f\U000e0041ok"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("sidecar.tls", logging.INFO, __file__, 1,
                               "tls.handshake_refused", None, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_escape_every_character_that_does_not_print() -> None:
    line = JSONFormatter().format(_record(common_names=[HOSTILE], path=HOSTILE))
    assert line.isprintable()  # no raw newline, escape, bidi override or line separator
    entry = json.loads(line)
    assert entry["path"] == HOSTILE and entry["common_names"] == [HOSTILE]
    assert "é" in JSONFormatter().format(_record(name_="é"))  # printable text stays as is


def test_text_lines_escape_every_character_that_does_not_print(
        capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("info", "text")
    try:
        logging.getLogger("sidecar.test").info("request.refused", extra={"path": HOSTILE})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.removesuffix("\n").isprintable()
    assert "path=e\\nerror FORGED\\x1b[31m\\u202e\\u2028\\x9b31m\\x7f" in err
