"""`sidecar config check` and `sidecar serve` on bad input: one line, the key, non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar.tools.devcerts import write_dev_certs


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def _config(tmp_path: Path, body: str = "") -> Path:
    write_dev_certs(tmp_path / "certs")
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"""\
tls: {{cert_file: certs/server.pem, key_file: certs/server.key, client_ca_files: [certs/ca.pem]}}
meta: {{app_secrets: [s3cret], verify_token: tok}}
upstream: {{url: "http://127.0.0.1:9/events"}}
{body}""")
    return path


def test_config_check_ok(tmp_path):
    done = _run("config", "check", "-c", str(_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout and "s3cret" not in done.stdout


def test_config_check_unknown_key(tmp_path):
    done = _run("config", "check", "-c", str(_config(tmp_path, "limits: {max_body: 1}\n")))
    assert done.returncode == 2
    assert done.stderr == "sidecar: error: config key 'limits.max_body': unknown key\n"


def test_config_check_missing_meta_ca_file(tmp_path):
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("client_ca_files: [certs/ca.pem]",
                                             "client_ca_files: [certs/meta-outbound-api-ca-2025-12.pem]"))
    done = _run("config", "check", "-c", str(path))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "meta-outbound-api-ca-2025-12.pem" in done.stderr and "not found" in done.stderr


def test_config_check_key_mismatch(tmp_path):
    path = _config(tmp_path)
    (tmp_path / "certs" / "server.key").write_bytes((tmp_path / "certs" / "client.key").read_bytes())
    done = _run("config", "check", "-c", str(path))
    assert done.returncode == 2 and "does not match" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_with_bad_config_exits_with_one_line(tmp_path):
    done = _run("serve", "-c", str(_config(tmp_path, "delivery: {mode: later}\n")))
    assert done.returncode == 2
    assert done.stderr.strip() == ("sidecar: error: config key 'delivery.mode': must be one of "
                                   "spool, direct")


def test_every_command_has_help():
    for command in (["serve"], ["config", "check"], ["certs", "check"], ["certs", "probe"],
                    ["certs", "dev"], ["send-test"], ["spool", "stats"], ["spool", "list"],
                    ["spool", "replay"], ["spool", "purge"], ["subscriptions", "list"],
                    ["subscriptions", "check"], ["demo"]):
        done = _run(*command, "--help")
        assert done.returncode == 0 and "usage:" in done.stdout, command


def test_unknown_command_is_usage_error():
    done = _run("frobnicate")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


def test_demo_runs_end_to_end():
    done = _run("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo OK" in done.stdout and "SIGNATURE BAD" not in done.stdout
    # The sink's threads print while the demo sends: every line must still be whole,
    # and every event the sink got is printed before the summary (a redelivery may add
    # a line: at-least-once).
    lines = done.stdout.splitlines()
    prefixes = ("demo folder: ", "1. ", "2. ", "3. ", "  POST ", "  sink <- ", "4. summary: ",
                "demo OK")
    assert all(line.startswith(prefixes) for line in lines), done.stdout
    assert all(line.count("sink <- ") + line.count("POST ") <= 1 for line in lines), done.stdout
    summary = next(i for i, line in enumerate(lines) if line.startswith("4. summary: "))
    delivered = int(lines[summary].split("; ")[1].split("/")[0])
    assert sum(line.startswith("  sink <- ") for line in lines[:summary]) >= delivered
    assert "demo OK" in lines[summary + 1:]


def test_upstream_ca_file_is_checked_and_listed(tmp_path):
    """``upstream.ca_file`` (an https upstream on an internal CA): config check validates
    it like the TLS files, and certs check lists its certificates with their expiry."""
    path = _config(tmp_path)
    path.write_text(path.read_text().replace(
        'upstream: {url: "http://127.0.0.1:9/events"}',
        'upstream: {url: "https://backend.internal/events", ca_file: certs/ca.pem}'))
    done = _run("config", "check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert f"(trusting {tmp_path / 'certs' / 'ca.pem'})" in done.stdout
    done = _run("certs", "check", "-c", str(path), "--json")
    assert done.returncode == 0, done.stdout
    assert '"kind": "upstream_ca"' in done.stdout

    path.write_text(path.read_text().replace("ca_file: certs/ca.pem", "ca_file: certs/none.pem"))
    for command in (("config", "check"), ("serve",)):
        done = _run(*command, "-c", str(path))
        assert done.returncode == 2
        assert done.stderr == (f"sidecar: error: upstream.ca_file {tmp_path / 'certs' / 'none.pem'}"
                               ": file not found\n"), command
    done = _run("certs", "check", "-c", str(path))
    assert done.returncode == 2 and "upstream_ca" in done.stdout and "file not found" in done.stdout
