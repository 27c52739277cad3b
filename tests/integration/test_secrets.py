"""Secrets never leave the process: not in logs, responses, metrics or CLI output.

One full session with every secret set, through the success path and every error
path we can provoke, collecting every byte the outside world sees; then each secret
is searched for in all of it.  Plus the ``*_file`` forms end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conftest import META_CN, SidecarProcess, free_port, running_sink
from sidecar.checks.signature import sign
from sidecar.tools.samples import sample_delivery
from sidecar.secret import Secret
from sidecar.tools.sink import RecordingSink

APP_SECRET_OLD = "appsecret-OLD-Qx81-\u00e9"
APP_SECRET_NEW = "appsecret-NEW-Zr44"
VERIFY_TOKEN = "verifytoken-Lm92"
SIGNING_SECRET = "signingsecret-Pw37"
GRAPH_TOKEN = "EAAgraphtoken-Hj55"
SECRETS = (APP_SECRET_OLD, APP_SECRET_NEW, VERIFY_TOKEN, SIGNING_SECRET, GRAPH_TOKEN)


def _forms(secret: str) -> set[str]:
    """The secret as it could appear in text: raw, JSON-escaped, URL-encoded."""
    return {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote(secret)}


def _config_text(port: int, admin_port: int, upstream_url: str, spool: Path, *,
                 meta: str, signing: str, graph: str = "") -> str:
    return f"""\
listen: {{host: 127.0.0.1, port: {port}, path: /webhooks/whatsapp}}
tls:
  cert_file: certs/server.pem
  key_file: certs/server.key
  client_ca_files: [certs/client-ca.pem]
  allowed_client_names: [{META_CN}]
  reload_interval_s: 0.5
meta:
{meta}upstream:
  url: {upstream_url}
  timeout_s: 1
{signing}delivery:
  spool_path: {spool}
  backoff_initial_s: 0.05
  backoff_max_s: 0.2
admin: {{host: 127.0.0.1, port: {admin_port}}}
logging: {{level: debug, format: json}}
{graph}"""


@pytest.fixture
def recording_sink() -> Iterator[RecordingSink]:
    with running_sink(SIGNING_SECRET) as s:  # this file's own signing secret
        yield s


@pytest.fixture
def processes() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()


def _start(folder: Path, text: str, port: int, admin_port: int, pki,
           processes: list[SidecarProcess]) -> SidecarProcess:
    config = folder / "sidecar.yaml"
    config.write_text(text, encoding="utf-8")
    proc = SidecarProcess(config, port, admin_port, pki, "/webhooks/whatsapp",
                          folder / "sidecar.log", "asyncio")
    processes.append(proc)
    return proc.start()


def _cli(*args: str, env_extra: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "META_ACCESS_TOKEN"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=30, env=env, cwd=cwd)


def _dump(response: httpx.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
    return f"{response.status_code}\n{headers}\n{response.text}"


def test_no_secret_appears_anywhere_in_a_full_session(tmp_path, pki, recording_sink,
                                                      processes, monkeypatch):
    monkeypatch.setenv("T_APP_OLD", APP_SECRET_OLD)
    monkeypatch.setenv("T_SIGNING", SIGNING_SECRET)
    port, admin_port, dead_port = free_port(), free_port(), free_port()
    text = _config_text(
        port, admin_port, recording_sink.url, tmp_path / "var" / "spool.db",
        meta=f'  app_secrets: ["${{T_APP_OLD}}", "{APP_SECRET_NEW}"]\n'
             f'  verify_token: "{VERIFY_TOKEN}"\n',
        signing='  signing_secret: "${T_SIGNING}"\n',
        graph=f'graph: {{access_token: "{GRAPH_TOKEN}", base_url: "http://127.0.0.1:{dead_port}"}}\n')
    sidecar = _start(tmp_path, text, port, admin_port, pki, processes)
    seen: list[str] = []  # every byte the outside world got to see

    def post(body: bytes, secret: str | None = APP_SECRET_NEW, **headers: str) -> httpx.Response:
        h = {"content-type": "application/json"}
        if secret is not None:
            h["x-hub-signature-256"] = sign(Secret(secret), body)
        h.update(headers)
        with sidecar.client() as c:
            r = c.post(sidecar.url, content=body, headers=h)
        seen.append(_dump(r))
        return r

    def get(url: str, **params: str) -> httpx.Response:
        with sidecar.client() as c:
            r = c.get(url, params=params)
        seen.append(_dump(r))
        return r

    valid = json.dumps(sample_delivery("messages", unique="secrets-1")).encode()
    # Verification: right token, wrong token, token without challenge, token in a 404 URL.
    assert get(sidecar.url, **{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                               "hub.challenge": "c1"}).text == "c1"
    assert get(sidecar.url, **{"hub.mode": "subscribe",
                               "hub.verify_token": VERIFY_TOKEN + "x",
                               "hub.challenge": "c2"}).status_code == 403
    assert get(sidecar.url, **{"hub.mode": "subscribe",
                               "hub.verify_token": VERIFY_TOKEN}).status_code == 400
    assert get(sidecar.url.replace("/whatsapp", "/nope"),
               **{"hub.verify_token": VERIFY_TOKEN}).status_code == 404
    # Deliveries: bad signature, missing signature, secret as the signature, bad JSON,
    # not an envelope, wrong method, too large; then good ones (both secrets) while
    # the upstream answers 500, then recovers.
    assert post(valid, secret="not-the-secret").status_code == 401
    assert post(valid, secret=None).status_code == 401
    assert post(valid, secret=None,
                **{"x-hub-signature-256": f"sha256={APP_SECRET_NEW}"}).status_code == 401
    assert post(b'{"object": NaN', ).status_code == 400
    assert post(b'{"object": "page"}').status_code == 400
    recording_sink.status = 500
    assert post(valid).status_code == 200
    assert post(json.dumps(sample_delivery("messages", unique="secrets-2")).encode(),
                secret=APP_SECRET_OLD).status_code == 200
    deadline = time.monotonic() + 10
    while sum(r.answered == 500 for r in recording_sink.requests) < 3:
        assert time.monotonic() < deadline, "the upstream 500 was never retried"
        time.sleep(0.05)
    recording_sink.status = 200
    assert len(recording_sink.wait_for(2, timeout_s=10)) == 2
    assert all(r.signature_ok for r in recording_sink.requests)
    with sidecar.client() as c:
        r = c.put(sidecar.url, content=valid)
    assert r.status_code == 405
    seen.append(_dump(r))
    # Admin listener.
    for path in ("/healthz", "/readyz", "/metrics"):
        r = httpx.get(sidecar.admin_url + path, timeout=5)
        assert r.status_code == 200
        seen.append(_dump(r))
    # A reload with a broken file (YAML error on a line holding a secret) keeps serving.
    config_text = sidecar.config_path.read_text(encoding="utf-8")
    sidecar.config_path.write_text(config_text.replace(
        f'verify_token: "{VERIFY_TOKEN}"', f'verify_token: "{VERIFY_TOKEN}'), encoding="utf-8")
    sidecar.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config.reload_failed" not in sidecar.log():
        assert time.monotonic() < deadline, sidecar.log()
        time.sleep(0.05)
    sidecar.config_path.write_text(config_text, encoding="utf-8")

    # CLI, every command that reads the config, success and error paths.
    cfg = str(sidecar.config_path)
    broken_key = tmp_path / "broken.yaml"
    broken_key.write_text(config_text.replace("certs/server.key", "certs/client-ca.pem"),
                          encoding="utf-8")
    runs = [
        (_cli("config", "check", "-c", cfg), 0),
        (_cli("config", "check", "-c", str(broken_key)), 2),
        (_cli("certs", "check", "-c", cfg), 0),
        (_cli("certs", "check", "-c", cfg, "--json"), 0),
        (_cli("certs", "check", "-c", str(broken_key)), 2),
        (_cli("spool", "stats", "-c", cfg), 0),
        (_cli("spool", "list", "-c", cfg, "--json"), 0),
        (_cli("send-test", "-c", cfg, "--cert", str(pki.meta_client),
              "--key", str(pki.meta_client), "--ca", str(pki.dir / "server-ca.pem")), 0),
        (_cli("certs", "probe", sidecar.url, "--cert", str(pki.meta_client),
              "--key", str(pki.meta_client), "--ca", str(pki.dir / "server-ca.pem"),
              "--verify-token", VERIFY_TOKEN), 0),
        (_cli("certs", "probe", sidecar.url, "--cert", str(pki.meta_client),
              "--key", str(pki.meta_client), "--ca", str(pki.dir / "server-ca.pem"),
              "--verify-token", VERIFY_TOKEN + "-wrong"), 1),
    ]
    for action in (["list"], ["subscribe", "--override-callback-uri", "https://hooks.example/x"],
                   ["unsubscribe"]):
        runs.append((_cli("subscriptions", *action, "--waba-id", "1029384756", "-c", cfg,
                          "--max-retries", "0", "--timeout-s", "2"), 1))
    runs.append((_cli("subscriptions", "list", "--waba-id", "1029384756", "--max-retries", "0",
                      "--timeout-s", "2", "--graph-url", f"http://127.0.0.1:{dead_port}",
                      env_extra={"META_ACCESS_TOKEN": GRAPH_TOKEN}), 1))
    for proc, expected in runs:
        assert proc.returncode == expected, (proc.args, proc.stdout, proc.stderr)
        seen.append(f"{proc.stdout}\n{proc.stderr}")  # not the args: they hold a token

    assert sidecar.stop() == 0
    log = sidecar.log()
    assert "config.reload_failed" in log and "delivery." in log  # the error paths did log
    haystacks = {"server log": log, "responses, metrics and CLI output": "\n".join(seen)}
    for where, text in haystacks.items():
        for secret in SECRETS:
            for form in _forms(secret):
                assert form not in text, f"a secret ({form[:6]}…) appears in the {where}"


def _write_secret(folder: Path, name: str, value: str) -> Path:
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")  # trailing newline, as editors write it
    path.chmod(0o600)
    return path


def test_secret_files_work_end_to_end(tmp_path, pki, recording_sink, processes):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    _write_secret(secrets_dir, "app-old", APP_SECRET_OLD)
    _write_secret(secrets_dir, "app-new", APP_SECRET_NEW)
    _write_secret(secrets_dir, "verify-token", VERIFY_TOKEN)
    signing_file = _write_secret(secrets_dir, "signing", SIGNING_SECRET)
    port, admin_port = free_port(), free_port()
    text = _config_text(
        port, admin_port, recording_sink.url, tmp_path / "var" / "spool.db",
        meta="  app_secrets_files: [secrets/app-old, secrets/app-new]\n"
             "  verify_token_file: secrets/verify-token\n",   # relative to the config
        signing=f"  signing_secret_file: {signing_file}\n")  # absolute
    sidecar = _start(tmp_path, text, port, admin_port, pki, processes)

    with sidecar.client() as c:
        r = c.get(sidecar.url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                       "hub.challenge": "from-file"})
        assert r.status_code == 200 and r.text == "from-file"
        r = c.get(sidecar.url, params={"hub.mode": "subscribe",
                                       "hub.verify_token": VERIFY_TOKEN + "\n",
                                       "hub.challenge": "x"})
        assert r.status_code == 403  # the newline was trimmed from the file, not kept
    for n, secret in enumerate((APP_SECRET_OLD, APP_SECRET_NEW)):
        body = json.dumps(sample_delivery("messages", unique=f"file-{n}")).encode()
        assert sidecar.post(body, secret=secret).status_code == 200
    body = json.dumps(sample_delivery("messages", unique="file-bad")).encode()
    assert sidecar.post(body, secret=APP_SECRET_OLD + "\n").status_code == 401
    recording_sink.wait_for(2, timeout_s=10)
    assert [r.signature_ok for r in recording_sink.requests] == [True, True]
    assert sidecar.stop() == 0
    for secret in SECRETS[:4]:
        assert secret not in sidecar.log()


@pytest.mark.parametrize("key, inline, file_form", [
    ("meta.app_secrets", '  app_secrets: ["a"]\n', "  app_secrets_files: [s]\n"),
    ("meta.verify_token", '  verify_token: "v"\n', "  verify_token_file: s\n"),
    ("upstream.signing_secret", '  signing_secret: "x"\n', "  signing_secret_file: s\n"),
    ("graph.access_token", '  access_token: "t"\n', "  access_token_file: s\n"),
])
def test_both_forms_of_a_secret_is_a_one_line_error(tmp_path, pki, key, inline, file_form):
    _write_secret(tmp_path, "s", "secret-from-file")
    section, name = key.split(".")
    blocks = {
        "meta": '  app_secrets: ["a"]\n  verify_token: "v"\n',
        "signing": "",
        "graph": "",
    }
    if section == "meta":
        other = "  verify_token: \"v\"\n" if name == "app_secrets" else '  app_secrets: ["a"]\n'
        blocks["meta"] = inline + file_form + other
    elif section == "upstream":
        blocks["signing"] = inline + file_form
    else:
        blocks["graph"] = "graph:\n" + inline + file_form
    config = tmp_path / "sidecar.yaml"
    config.write_text(_config_text(8443, 9090, "http://127.0.0.1:9/events",
                                   tmp_path / "spool.db", meta=blocks["meta"],
                                   signing=blocks["signing"], graph=blocks["graph"]),
                      encoding="utf-8")
    proc = _cli("config", "check", "-c", str(config))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0] and "not both" in lines[0], proc.stderr
    assert "secret-from-file" not in proc.stdout + proc.stderr
