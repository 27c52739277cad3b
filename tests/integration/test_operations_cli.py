"""CLI flags and config values that used to end in a traceback or a silent surprise:
each is one line naming the problem and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.tools.devcerts import write_dev_certs


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60)


def _config(tmp_path: Path, upstream: str = "http://127.0.0.1:9/events", body: str = "") -> Path:
    write_dev_certs(tmp_path / "certs")
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"""\
tls: {{cert_file: certs/server.pem, key_file: certs/server.key, client_ca_files: [certs/ca.pem]}}
meta: {{app_secrets: [s3cret], verify_token: tok}}
upstream: {{url: "{upstream}"}}
{body}""", encoding="utf-8")
    return path


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


@pytest.mark.parametrize("flags", [
    ["spool", "list", "--limit", "99999999999999999999"],
    ["spool", "list", "--limit", "0"],
    ["serve", "--workers", "100000"],
    ["certs", "check", "--warn-days", "9" * 30],
    ["subscriptions", "list", "--waba-id", "1", "--timeout-s", "1e300"],
    ["subscriptions", "list", "--waba-id", "1", "--max-retries", "9" * 30],
])
def test_out_of_range_flags_are_one_line(tmp_path, flags):
    config = _config(tmp_path)
    args = [*flags, "-c", str(config)] if flags[0] in ("spool", "serve", "certs") else flags
    done = _run(*args)
    assert done.returncode == 2
    assert "must be" in _one_line(done)


def test_config_check_refuses_a_non_ascii_upstream_url(tmp_path):
    done = _run("config", "check", "-c", str(_config(tmp_path, "http://127.0.0.1:1/\u2603")))
    assert done.returncode == 2
    assert "'upstream.url': must be ASCII" in _one_line(done)


def test_serve_refuses_it_too_before_starting(tmp_path):
    done = _run("serve", "--workers", "1", "-c",
                str(_config(tmp_path, "http://127.0.0.1:1/\u2603")))
    assert done.returncode == 2
    assert "'upstream.url': must be ASCII" in _one_line(done)


def test_config_check_never_prints_upstream_credentials(tmp_path):
    done = _run("config", "check", "-c",
                str(_config(tmp_path, "http://admin:hunter2@127.0.0.1:9/events")))
    assert "must not carry credentials" in _one_line(done)
    assert "hunter2" not in done.stdout + done.stderr


def test_config_check_does_not_print_the_upstream_query(tmp_path):
    done = _run("config", "check", "-c",
                str(_config(tmp_path, "http://127.0.0.1:9/events?key=abc123")))
    assert done.returncode == 0, done.stderr
    assert "abc123" not in done.stdout and "http://127.0.0.1:9/events?…" in done.stdout


@pytest.mark.parametrize("path", ["/webhooks/whatsapp?x=1", "/web hooks"])
def test_config_check_refuses_a_listen_path_that_cannot_match(tmp_path, path):
    done = _run("config", "check", "-c", str(_config(tmp_path, body=f'listen: {{path: "{path}"}}\n')))
    assert "'listen.path': must be a URL path" in _one_line(done)


def test_config_check_refuses_a_spinning_reload_interval(tmp_path):
    config = _config(tmp_path)
    config.write_text(config.read_text().replace(
        "client_ca_files: [certs/ca.pem]}", "client_ca_files: [certs/ca.pem], reload_interval_s: 1e-300}"))
    assert "'tls.reload_interval_s': must be >= 0.1" in _one_line(
        _run("config", "check", "-c", str(config)))
