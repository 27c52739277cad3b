"""``sidecar subscriptions …`` against a local fake Graph API (a real HTTP server).

Each test scripts the fake's answers, runs the CLI in-process through
``sidecar.cli.main`` (one test spawns ``python -m sidecar``), and checks the exit code,
the message, what the fake received, and that no token ever reaches stdout/stderr.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

import sidecar.cli
from sidecar.cli import subscriptions

pytestmark = pytest.mark.timeout(30)

TOKEN = "EAAtok_SECRET_123"
CONFIG_TOKEN = "EAAcfg_SECRET_456"
VERIFY_TOKEN = "vt_SECRET_789"
SECRETS = (TOKEN, CONFIG_TOKEN, VERIFY_TOKEN)
WABA = "1029384756"
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- fake Graph API


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b'{"success": true}'
    headers: dict[str, str] = field(default_factory=dict)
    trickle_s: float = 0.0  # a pause before each byte of the body


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def json_answer(value: object, status: int = 200, **headers: str) -> Answer:
    return Answer(status, json.dumps(value).encode(), {k.replace("_", "-"): v
                                                       for k, v in headers.items()})


def graph_error(code: int, subcode: int | None = None, status: int = 400,
                **headers: str) -> Answer:
    error: dict[str, object] = {"message": f"(#{code}) something went wrong",
                                "type": "OAuthException", "code": code, "fbtrace_id": "AbC123"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return json_answer({"error": error}, status, **headers)


def buc_header(minutes: float) -> str:
    return json.dumps({WABA: [{"type": "whatsapp_business_management", "call_count": 100,
                               "total_cputime": 5, "total_time": 5,
                               "estimated_time_to_regain_access": minutes}]})


APPS = {"data": [
    {"whatsapp_business_api_data": {"id": "5550001", "link": "https://www.facebook.com/games/x",
                                    "name": "Acme Bot"}},
    {"whatsapp_business_api_data": {"id": "5550002", "link": "https://l.example/y",
                                    "name": "Other"},
     "override_callback_uri": "https://hooks.example.com/wa"},
]}


class FakeGraph:
    """Answers with ``script`` in order (the last answer repeats) and records requests."""

    def __init__(self) -> None:
        self.script: list[Answer] = [Answer()]
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                    answer = fake.script[min(len(fake.seen), len(fake.script)) - 1]
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if not answer.trickle_s:
                    self.wfile.write(answer.body)
                    return
                for i in range(len(answer.body)):
                    time.sleep(answer.trickle_s)
                    self.wfile.write(answer.body[i:i + 1])
                    self.wfile.flush()

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, *answers: Answer) -> None:
        self.script = list(answers)


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def cli_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the real parser; while sibling command modules are still missing, build one with
    only ``subscriptions`` registered so ``sidecar.cli.main`` itself is still exercised."""
    try:
        sidecar.cli.build_parser()
    except ImportError:
        def only_subscriptions() -> sidecar.cli._Parser:
            parser = sidecar.cli._Parser(prog="sidecar")
            sub = parser.add_subparsers(dest="command", parser_class=sidecar.cli._Parser)
            sub.required = True
            subscriptions.register(sub)
            return parser

        monkeypatch.setattr(sidecar.cli, "build_parser", only_subscriptions)


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = sidecar.cli.main(list(argv))
    captured = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in captured.out and secret not in captured.err
    return Result(code, captured.out, captured.err)


def sub(graph: FakeGraph, action: str, *extra: str) -> list[str]:
    return ["subscriptions", action, "--waba-id", WABA, "--graph-url", graph.url, *extra]


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_request(seen: Seen, method: str, version: str = "v24.0",
                   token: str = TOKEN) -> None:
    assert seen.method == method
    assert seen.path == f"/{version}/{WABA}/subscribed_apps"
    assert seen.headers["Authorization"] == f"Bearer {token}"


# ---------------------------------------------------------------------- list


def test_list_prints_table(graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["APP", "ID", "NAME", "LINK", "OVERRIDE"]
    assert "5550001" in lines[1] and "Acme Bot" in lines[1] and lines[1].endswith("-")
    assert lines[2].endswith("https://hooks.example.com/wa")
    assert len(graph.seen) == 1
    assert_request(graph.seen[0], "GET")
    assert graph.seen[0].body == b""


def test_list_json(graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *sub(graph, "list", "--json", "--api-version", "v23.0"))
    assert result.code == 0
    assert json.loads(result.out) == [
        {"app_id": "5550001", "name": "Acme Bot", "link": "https://www.facebook.com/games/x",
         "override_callback_uri": None},
        {"app_id": "5550002", "name": "Other", "link": "https://l.example/y",
         "override_callback_uri": "https://hooks.example.com/wa"},
    ]
    assert_request(graph.seen[0], "GET", version="v23.0")


def test_list_empty_warns_webhooks_will_not_arrive(
        graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer({"data": []}))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 0
    assert result.out.startswith(f"no apps subscribed to WABA {WABA}")
    assert "will not arrive" in result.out


# ---------------------------------------------------------------------- subscribe / unsubscribe


@pytest.mark.parametrize("success", [True, "true"])
def test_subscribe_accepts_both_success_forms(
        graph: FakeGraph, capsys: pytest.CaptureFixture[str], success: object) -> None:
    graph.answer(json_answer({"success": success}))
    result = run_cli(capsys, *sub(graph, "subscribe"))
    assert (result.code, result.out) == (0, f"subscribed app to WABA {WABA}\n")
    assert_request(graph.seen[0], "POST")
    assert graph.seen[0].body == b""


def test_subscribe_twice_is_still_success(graph: FakeGraph,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer({"success": True}))
    for _ in range(2):
        assert run_cli(capsys, *sub(graph, "subscribe", "--json")).out == \
            '{\n  "success": true\n}\n'
    assert [s.method for s in graph.seen] == ["POST", "POST"]


def test_subscribe_with_override_sends_body(graph: FakeGraph,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, *sub(graph, "subscribe", "--override-callback-uri",
                                  "https://hooks.example.com/wa", "--verify-token", VERIFY_TOKEN))
    assert result.code == 0
    assert "https://hooks.example.com/wa" in result.out
    assert json.loads(graph.seen[0].body) == {
        "override_callback_uri": "https://hooks.example.com/wa", "verify_token": VERIFY_TOKEN}
    assert graph.seen[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("extra", [
    ["--override-callback-uri", "https://hooks.example.com/wa"],
    ["--verify-token", VERIFY_TOKEN],
    ["--override-callback-uri", "http://plain.example.com/wa", "--verify-token", VERIFY_TOKEN],
])
def test_subscribe_override_flag_misuse_is_usage_error(
        graph: FakeGraph, capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    result = run_cli(capsys, *sub(graph, "subscribe", *extra))
    assert result.code == 2
    assert result.err.startswith("sidecar") and result.err.count("\n") == 1
    assert ": error: " in result.err
    assert graph.seen == []


def test_unsubscribe(graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer({"success": "true"}))
    result = run_cli(capsys, *sub(graph, "unsubscribe"))
    assert (result.code, result.out) == (0, f"unsubscribed app from WABA {WABA}\n")
    assert_request(graph.seen[0], "DELETE")


def test_unsubscribe_json(graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, *sub(graph, "unsubscribe", "--json"))
    assert result.code == 0 and json.loads(result.out) == {"success": True}


def test_success_false_is_exit_1(graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer({"success": False}))
    result = run_cli(capsys, *sub(graph, "subscribe"))
    assert result.code == 1
    assert "did not confirm the POST" in result.err


# ---------------------------------------------------------------------- Graph errors


@pytest.mark.parametrize(("code", "subcode", "status", "exit_code"), [
    (190, 463, 401, 3), (10, None, 403, 4), (200, None, 403, 4), (100, 33, 400, 1)])
def test_graph_errors_map_to_exit_codes(
        graph: FakeGraph, capsys: pytest.CaptureFixture[str],
        code: int, subcode: int | None, status: int, exit_code: int) -> None:
    graph.answer(graph_error(code, subcode, status))
    result = run_cli(capsys, *sub(graph, "list"))
    ident = f"{code}/{subcode}" if subcode is not None else f"{code}"
    assert result.code == exit_code
    assert result.err == (f"sidecar: error: Graph API error {ident} (OAuthException): "
                          f"(#{code}) something went wrong [fbtrace_id AbC123]\n")
    assert result.out == ""
    assert len(graph.seen) == 1


def test_a_graph_error_cannot_drive_the_terminal(graph: FakeGraph,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Graph's words reach the operator's terminal: escapes, a bidi override and a line
    # separator are shown escaped, not obeyed.
    graph.answer(json_answer({"error": {"message": "bad\x1b[2J\x1b]0;owned\x07\u202e\u2028x",
                                        "type": "OAuthException", "code": 100}}, 400))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 1
    line = result.err.removesuffix("\n")
    assert line.isprintable()  # the line separator became a space, the rest is escaped
    assert "\\x1b[2J" in line and "\\x07" in line and "\\u202e" in line


@pytest.mark.parametrize("url", ["http://graph.example.com", "http://10.0.0.8:8080"])
def test_the_bearer_token_is_never_sent_in_the_clear(capsys: pytest.CaptureFixture[str],
                                                     url: str) -> None:
    result = run_cli(capsys, "subscriptions", "list", "--waba-id", WABA, "--graph-url", url)
    assert result.code == 2
    assert "must be an https:// URL" in result.err and result.err.count("\n") == 1


@pytest.mark.parametrize("throttle", [
    graph_error(80008, 2446079, X_Business_Use_Case_Usage=buc_header(0)),
    Answer(429, b"", {"Retry-After": "0"}),
    graph_error(4, status=400, Retry_After="0"),
])
def test_throttled_then_ok(graph: FakeGraph, capsys: pytest.CaptureFixture[str],
                           throttle: Answer) -> None:
    graph.answer(throttle, throttle, json_answer({"data": []}))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 0, result.err
    waits = result.err.splitlines()
    assert len(waits) == 2 and len(graph.seen) == 3
    assert waits[0].startswith("sidecar: rate limited by Graph (")
    assert waits[0].endswith("retrying in 0 s (1/3)") and waits[1].endswith("(2/3)")


def test_throttled_forever_is_exit_5(graph: FakeGraph,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(graph_error(80008, 2446079, X_Business_Use_Case_Usage=buc_header(0)))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 5
    assert len(graph.seen) == 4
    assert result.err.splitlines()[-1].endswith("still rate limited after 3 retries")
    assert "(code 80008); retrying in 0 s (3/3)" in result.err


def test_429_forever_with_max_retries_1(graph: FakeGraph,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(Answer(429, b"", {"Retry-After": "0"}))
    result = run_cli(capsys, *sub(graph, "unsubscribe", "--max-retries", "1"))
    assert result.code == 5 and len(graph.seen) == 2
    assert "HTTP 429" in result.err


def test_long_advertised_wait_fails_at_once(graph: FakeGraph,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(graph_error(80008, X_Business_Use_Case_Usage=buc_header(30)))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 5 and len(graph.seen) == 1
    assert "Meta asks to wait 30 min (1800 s)" in result.err


@pytest.mark.parametrize(("answer", "needle"), [
    (Answer(200, b'{"data": [', {}), "not JSON"),
    (Answer(500, b"<html>Internal error " + b"x" * 5000 + b"</html>", {}), "HTTP 500"),
    (json_answer({"unexpected": 1}), "unexpected Graph API answer"),
])
def test_bad_answers_are_exit_1(graph: FakeGraph, capsys: pytest.CaptureFixture[str],
                                answer: Answer, needle: str) -> None:
    graph.answer(answer)
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 1
    assert needle in result.err and result.err.count("\n") == 1
    assert len(result.err) < 300 and "xxxx" not in result.err


def test_connection_refused_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = unused_port()
    result = run_cli(capsys, "subscriptions", "list", "--waba-id", WABA, "--graph-url",
                     f"http://127.0.0.1:{port}", "--timeout-s", "5")
    assert result.code == 1
    assert result.err == "sidecar: error: cannot reach Graph API at 127.0.0.1: ConnectError\n"


# ---------------------------------------------------------------------- usage


def test_missing_token_is_exit_2(graph: FakeGraph, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_ACCESS_TOKEN", "")
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 2 and "META_ACCESS_TOKEN" in result.err
    result = run_cli(capsys, *sub(graph, "list", "--token-env", "MY_GRAPH_TOKEN"))
    assert result.code == 2 and "MY_GRAPH_TOKEN" in result.err
    assert graph.seen == []


def test_token_env_names_the_variable(graph: FakeGraph, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_ACCESS_TOKEN")
    monkeypatch.setenv("MY_GRAPH_TOKEN", TOKEN)
    graph.answer(json_answer({"data": []}))
    assert run_cli(capsys, *sub(graph, "list", "--token-env", "MY_GRAPH_TOKEN")).code == 0
    assert_request(graph.seen[0], "GET")


@pytest.mark.parametrize("argv", [
    ["subscriptions", "list", "--waba-id", "12/../me"],
    ["subscriptions", "list"],
    ["subscriptions", "list", "--waba-id", WABA, "--max-retries", "-1"],
    ["subscriptions", "list", "--waba-id", WABA, "--timeout-s", "0"],
    ["subscriptions", "list", "--waba-id", WABA, "--api-version", "24"],
    ["subscriptions", "frobnicate", "--waba-id", WABA],
    ["subscriptions", "check", "--waba-id", WABA],
])
def test_bad_input_is_exit_2(graph: FakeGraph, capsys: pytest.CaptureFixture[str],
                             argv: list[str]) -> None:
    result = run_cli(capsys, *argv, "--graph-url", graph.url)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "error:" in result.err
    assert graph.seen == []


@pytest.mark.parametrize("argv", [
    ["list", "--waba-id", WABA, "--graph-url", "http://[::1"],
    ["list", "--waba-id", WABA, "--graph-url", "http://xn--"],
    ["list", "--waba-id", WABA, "--graph-url", "ftp://graph.example"],
    ["list", "--waba-id", WABA, "--graph-url", "not a url"],
    ["subscribe", "--waba-id", WABA, "--override-callback-uri", "https://exa mple/cb",
     "--verify-token", "x"],
    ["subscribe", "--waba-id", WABA, "--override-callback-uri", "http://example.com/cb",
     "--verify-token", "x"],
    ["subscribe", "--waba-id", WABA, "--override-callback-uri", "https://", "--verify-token",
     "x"],
])
def test_bad_urls_are_one_usage_line(capsys: pytest.CaptureFixture[str],
                                     argv: list[str]) -> None:
    result = run_cli(capsys, "subscriptions", *argv)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "error:" in result.err
    assert "Traceback" not in result.err


def test_graph_text_cannot_forge_lines_or_drive_the_terminal(
        graph: FakeGraph, capsys: pytest.CaptureFixture[str]) -> None:
    evil = {"data": [{"whatsapp_business_api_data": {
        "id": "5550001", "name": "\x1b[31mEVIL\x1b[0m\nFAKE OK line", "link": "x"}}]}
    graph.answer(json_answer(evil))
    result = run_cli(capsys, *sub(graph, "list"))
    assert result.code == 0
    assert "\x1b" not in result.out and len(result.out.splitlines()) == 2
    assert "\\x1b[31mEVIL" in result.out


def test_timeout_bounds_an_answer_that_trickles(graph: FakeGraph,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # httpx's timeout is per read: a byte every 0.3 s would never trip it.
    graph.answer(Answer(body=b'{"data": []}' + b" " * 40, trickle_s=0.3))
    started = time.monotonic()
    result = run_cli(capsys, *sub(graph, "list", "--timeout-s", "1"))
    assert time.monotonic() - started < 4
    assert result.code == 1
    assert "did not finish answering within 1 s" in result.err, result.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "subscriptions", "subscribe", "--help")
    assert result.code == 0 and "--override-callback-uri" in result.out


# ---------------------------------------------------------------------- config file


def write_config(tmp_path: Path, graph_url: str, *, verify_token: str = VERIFY_TOKEN,
                 access_token: str | None = CONFIG_TOKEN) -> Path:
    graph_section = {"api_version": "v22.0", "base_url": graph_url}
    if access_token is not None:
        graph_section["access_token"] = access_token
    # Every key spelled out, like config/sidecar.example.yaml, so only graph.* and
    # meta.verify_token matter to these tests.
    config = {
        "listen": {"host": "127.0.0.1", "port": 8443, "path": "/webhooks/whatsapp"},
        "tls": {"cert_file": "server.pem", "key_file": "server.key",
                "client_ca_files": ["ca.pem"], "reload_interval_s": 30},
        "meta": {"app_secrets": ["app-secret"], "verify_token": verify_token},
        "upstream": {"url": "http://127.0.0.1:9/events", "timeout_s": 5, "batch_max": 1,
                     "max_in_flight": 8},
        "delivery": {"spool_path": "spool.db", "max_attempts": 20, "max_age_s": 604800,
                     "backoff_initial_s": 1, "backoff_max_s": 300, "dedup_retention_s": 604800,
                     "max_spool_events": 1000000},
        "limits": {"max_body_bytes": 3145728, "header_timeout_s": 10, "body_timeout_s": 30,
                   "keepalive_timeout_s": 75, "max_connections": 1000},
        "admin": {"host": "127.0.0.1", "port": 9090},
        "graph": graph_section,
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def test_config_supplies_defaults_and_flags_override(
        graph: FakeGraph, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("META_ACCESS_TOKEN")
    config = write_config(tmp_path, graph.url)
    graph.answer(json_answer({"data": []}))
    base = ["subscriptions", "list", "--waba-id", WABA, "-c", str(config)]
    assert run_cli(capsys, *base).code == 0
    assert_request(graph.seen[-1], "GET", version="v22.0", token=CONFIG_TOKEN)
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    assert run_cli(capsys, *base, "--api-version", "v24.0").code == 0
    assert_request(graph.seen[-1], "GET", version="v24.0", token=TOKEN)


def test_subscribe_override_takes_verify_token_from_config(
        graph: FakeGraph, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, graph.url)
    result = run_cli(capsys, "subscriptions", "subscribe", "--waba-id", WABA, "-c", str(config),
                     "--override-callback-uri", "https://hooks.example.com/wa")
    assert result.code == 0
    assert json.loads(graph.seen[0].body)["verify_token"] == VERIFY_TOKEN


# ---------------------------------------------------------------------- check


def check(graph: FakeGraph, config: Path, *extra: str) -> list[str]:
    return ["subscriptions", "check", "-c", str(config), "--waba-id", WABA, *extra]


def test_check_ok(graph: FakeGraph, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url),
                                    "--app-id", "5550002"))
    assert result.code == 0, result.out
    assert "OK   app 5550001 (Acme Bot)" in result.out
    assert "callback override https://hooks.example.com/wa" in result.out
    assert "FAIL" not in result.out


def test_check_no_apps_fails(graph: FakeGraph, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer({"data": []}))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url)))
    assert result.code == 1
    assert result.out.startswith(f"FAIL no apps subscribed to WABA {WABA}")


def test_check_other_app_fails(graph: FakeGraph, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url),
                                    "--app-id", "999", "--json"))
    assert result.code == 1
    report = json.loads(result.out)
    assert report["ok"] is False and "app 999 is not subscribed" in report["problems"][0]


def test_check_graph_error_keeps_its_exit_code(graph: FakeGraph, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(graph_error(190, 460, 401))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url)))
    assert result.code == 3 and "Graph API error 190/460" in result.err


# ---------------------------------------------------------------------- check --probe (mTLS)


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    client_cert: Path
    client_key: Path
    other_cert: Path
    other_key: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    client = ca.issue_cert("client.webhooks.fbclientcerts.com")
    client.cert_chain_pems[0].write_to_path(str(root / "client.pem"))
    client.private_key_pem.write_to_path(str(root / "client.key"))
    other = other_ca.issue_cert("client.webhooks.fbclientcerts.com")
    other.cert_chain_pems[0].write_to_path(str(root / "other.pem"))
    other.private_key_pem.write_to_path(str(root / "other.key"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED
    return Pki(root / "ca.pem", root / "client.pem", root / "client.key",
               root / "other.pem", root / "other.key", server)


@pytest.fixture
def endpoint(pki: Pki) -> Iterator[str]:
    """An mTLS endpoint answering the verification GET like the sidecar would."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            good = query.get("hub.mode") == ["subscribe"] and \
                query.get("hub.verify_token") == [VERIFY_TOKEN]
            body = query["hub.challenge"][0].encode() if good else b"forbidden"
            self.send_response(200 if good else 403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = pki.server.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/webhooks/whatsapp"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def probe_flags(pki: Pki, url: str, *, other: bool = False) -> list[str]:
    cert, key = (pki.other_cert, pki.other_key) if other else (pki.client_cert, pki.client_key)
    return ["--probe", url, "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca_file),
            "--timeout-s", "5"]


def test_check_probe_ok(graph: FakeGraph, tmp_path: Path, pki: Pki, endpoint: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url),
                                    *probe_flags(pki, endpoint)))
    assert result.code == 0, result.out
    assert f"OK   probe: {endpoint} answered the verification GET with the challenge" \
        in result.out


def test_check_probe_wrong_token_fails(graph: FakeGraph, tmp_path: Path, pki: Pki,
                                       endpoint: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    config = write_config(tmp_path, graph.url, verify_token="vt_SECRET_wrong")
    result = run_cli(capsys, *check(graph, config, *probe_flags(pki, endpoint)))
    assert result.code == 1
    assert "FAIL probe:" in result.out and "HTTP 403" in result.out
    assert "vt_SECRET_wrong" not in result.out + result.err


def test_check_probe_untrusted_client_cert_fails(graph: FakeGraph, tmp_path: Path, pki: Pki,
                                                 endpoint: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url),
                                    *probe_flags(pki, endpoint, other=True)))
    assert result.code == 1
    assert "FAIL probe:" in result.out and "verification GET failed" in result.out


def test_check_probe_needs_cert_and_key(graph: FakeGraph, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url),
                                    "--probe", "https://127.0.0.1:1/w"))
    assert result.code == 2 and "--cert" in result.err
    assert graph.seen == []


def test_check_probe_unreadable_key_is_exit_2(graph: FakeGraph, tmp_path: Path, pki: Pki,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    graph.answer(json_answer(APPS))
    result = run_cli(capsys, *check(graph, write_config(tmp_path, graph.url), "--probe",
                                    "https://127.0.0.1:1/w", "--cert", str(pki.client_cert),
                                    "--key", str(tmp_path / "missing.key")))
    assert result.code == 2 and "cannot load the client pair" in result.err


# ---------------------------------------------------------------------- real process

_SIBLINGS = ("serve", "config_cmd", "certs", "send_test", "spool_cmd", "demo")


@pytest.mark.skipif(
    any(importlib.util.find_spec(f"sidecar.cli.{name}") is None for name in _SIBLINGS),
    reason="python -m sidecar needs every CLI module; some are not written yet")
def test_python_m_sidecar_list(graph: FakeGraph) -> None:
    graph.answer(graph_error(190, 463, 401))
    env = {**os.environ, "META_ACCESS_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", *sub(graph, "list")],
        capture_output=True, text=True, timeout=20, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 3
    assert proc.stderr.startswith("sidecar: error: Graph API error 190/463 (OAuthException)")
    assert TOKEN not in proc.stdout + proc.stderr
    assert_request(graph.seen[0], "GET")
