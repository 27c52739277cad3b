"""The CLI as a shell sees it, in real processes: whatever goes wrong, one line on
stderr and an exit code, never a traceback, never a second line from a library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from sidecar.cli import main

CONFIG = """\
tls: {{cert_file: c.pem, key_file: k.pem, client_ca_files: [ca.pem]}}
meta: {{app_secrets: ["s"], verify_token: "t"}}
upstream: {{url: "http://127.0.0.1:9000/events"}}
delivery:
  {spool}
"""


def sidecar(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *argv], capture_output=True,
                          text=True, timeout=60, input=stdin)


def test_an_unreachable_postgres_spool_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(CONFIG.format(
        spool=f'spool_url: "postgresql://sidecar:pw-9f3@127.0.0.1:{free_port()}/sidecar"'))
    result = sidecar("spool", "stats", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("sidecar: error: ") and result.stderr.count("\n") == 1
    assert "pw-9f3" not in result.stderr


def test_a_reader_that_goes_away_is_a_quiet_exit(tmp_path: Path) -> None:
    spool = tmp_path / "spool.db"
    config = tmp_path / "sidecar.yaml"
    config.write_text(CONFIG.format(spool=f"spool_path: {spool}"))
    from sidecar.spool import SQLiteSpool
    from sidecar.events import Event

    filler = SQLiteSpool(spool)
    filler.store.add_many([([Event(id=f"evt_{i}", type="whatsapp.security", field="security",
                                   waba_id="1", phone_number_id=None,
                                   occurred_at="2026-01-01T00:00:00Z",
                                   received_at="2026-01-01T00:00:00.000Z", data={"i": i})
                             for i in range(3000)], [])])
    filler.close()
    # `| head -1`: the pipe closes while the table is still being written.
    shell = subprocess.run(
        f"{sys.executable} -m sidecar spool list --limit 3000 -c {config} | head -1",
        shell=True, capture_output=True, text=True, timeout=60)
    assert shell.stdout.startswith("ID")
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr


@pytest.mark.parametrize("value", ["0", "-5", "nan", "1e300"])
def test_demo_refuses_a_bad_timeout_before_starting_anything(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--timeout-s", value]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "--timeout-s" in err and out == ""


@pytest.mark.parametrize("given", ["--cert", "--key"])
def test_send_test_takes_cert_and_key_together(tmp_path: Path, given: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # One alone would be paired with the other half of `certs dev`'s pair.
    assert main(["send-test", "-c", str(tmp_path / "missing.yaml"), given,
                 str(tmp_path / "x.pem")]) == 2
    out, err = capsys.readouterr()
    assert "--cert and --key go together" in err and err.count("\n") == 1
