"""``sidecar spool …`` run in-process through ``sidecar.cli.main`` against a real spool
file filled through its blocking SQLite store."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.cli.spool_cmd import parse_duration
from sidecar.errors import UsageError
from sidecar.events import Event, content_event_id
from sidecar.events import QuarantinedChange
from sidecar.spool import Settlement, SQLiteSpool


def make_event(n: int) -> Event:
    return Event(id=f"evt_{n}", type="whatsapp.account_update", field="account_update",
                 waba_id="waba1", phone_number_id=None, occurred_at="2027-01-15T08:00:00Z",
                 received_at="2027-01-15T08:00:00.000Z", data={"event": "VERIFIED_ACCOUNT", "n": n})


def make_quarantined(value: dict[str, object]) -> QuarantinedChange:
    return QuarantinedChange(id=content_event_id("waba1", "account_update", 1700000000, value),
                             waba_id="waba1", field="account_update", entry_time=1700000000,
                             reason="event is required", value=value)


BAD = make_quarantined({"event": 5})  # still breaks the schema: event must be a string
NOW_VALID = make_quarantined({"event": "VERIFIED_ACCOUNT", "later": 1})


def write_config(folder: Path, spool_path: Path) -> Path:
    path = folder / "sidecar.yaml"
    path.write_text(f"""
tls:
  cert_file: server.pem
  key_file: server.key
  client_ca_files: [meta-ca.pem]
meta:
  app_secrets: ["app-secret"]
  verify_token: "verify-token"
upstream:
  url: http://127.0.0.1:9/events
delivery:
  spool_path: {spool_path}
  dedup_retention_s: 86400
""", encoding="utf-8")
    return path


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "spool.db"


@pytest.fixture
def config(tmp_path: Path, spool_path: Path) -> str:
    return str(write_config(tmp_path, spool_path))


@pytest.fixture
def filled(spool_path: Path) -> SQLiteSpool:
    """4 events: evt_0 delivered, evt_1 and evt_2 dead, evt_3 pending; 2 quarantined."""
    spool = SQLiteSpool(spool_path)
    spool.store.add_many([([make_event(i) for i in range(4)], [BAD, NOW_VALID])])
    spool.store.settle_and_claim(Settlement(), 3, lease_s=30)
    spool.store.settle(Settlement(delivered=["evt_0"], dead=[
        ("evt_1", "upstream answered 500"), ("evt_2", "upstream answered 502")]))
    yield spool
    spool.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["spool", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_json(capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "stats", "-c", config, "--json")
    assert code == 0
    stats = json.loads(out)
    assert {k: stats[k] for k in ("pending", "in_flight", "delivered", "dead", "quarantined")} \
        == {"pending": 1, "in_flight": 0, "delivered": 1, "dead": 2, "quarantined": 2}
    assert stats["oldest_pending_age_s"] >= 0


def test_stats_text(capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "stats", "-c", config)
    assert code == 0
    lines = dict(line.rsplit(None, 1) for line in out.splitlines())
    assert lines["dead"] == "2" and lines["in flight"] == "0" and lines["quarantined"] == "2"


def test_list_dead(capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "list", "-c", config, "--dead")
    assert code == 0
    assert "evt_1" in out and "evt_2" in out and "upstream answered 502" in out
    assert "evt_0" not in out and "evt_3" not in out


def test_list_json_events_and_quarantined(capsys: pytest.CaptureFixture[str], config: str,
                                          filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "list", "-c", config, "--dead", "--quarantined", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [e["id"] for e in listed["events"]] == ["evt_1", "evt_2"]
    assert listed["events"][0]["type"] == "whatsapp.account_update"
    assert {q["id"] for q in listed["quarantined"]} == {BAD.id, NOW_VALID.id}


def test_list_limit(capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    code, out, err = run_cli(capsys, "list", "-c", config, "--json", "--limit", "2")
    assert code == 0 and len(json.loads(out)["events"]) == 2
    assert err == ("spool list: more events than shown; the first 2 are listed "
                   "(--limit N lists more)\n")


def test_list_says_when_rows_were_left_out_and_only_then(
        capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    code, out, err = run_cli(capsys, "list", "-c", config, "--dead", "--quarantined",
                             "--limit", "1")
    assert code == 0 and "evt_1" in out and "evt_2" not in out
    assert "more dead events than shown; the first 1" in err
    assert "more quarantined changes than shown; the first 1" in err
    # Exactly the limit: nothing left out, nothing said.
    code, out, err = run_cli(capsys, "list", "-c", config, "--dead", "--quarantined",
                             "--limit", "2")
    assert code == 0 and "evt_1" in out and "evt_2" in out and err == ""


def test_replay_dead_and_quarantined(capsys: pytest.CaptureFixture[str], config: str,
                                     filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "replay", "-c", config, "evt_1", NOW_VALID.id)
    assert code == 0
    assert "replayed evt_1" in out and f"replayed {NOW_VALID.id}" in out
    stats = filled.admin.stats()
    assert (stats.pending, stats.dead, stats.quarantined) == (3, 1, 1)


def test_replay_reports_unknown_and_still_invalid(capsys: pytest.CaptureFixture[str],
                                                  config: str, filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "replay", "-c", config, "evt_2", "evt_missing", BAD.id)
    assert code == 1
    assert "replayed evt_2" in out
    assert "not found evt_missing" in out
    assert f"still invalid {BAD.id}: account_update: event must be a string" in out
    assert filled.admin.stats().dead == 1


def test_replay_all_dead(capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "replay", "-c", config, "--all-dead")
    assert code == 0 and "replayed 2 dead events" in out
    assert filled.admin.stats().dead == 0


def test_replay_needs_ids_or_all_dead(capsys: pytest.CaptureFixture[str], config: str,
                                      filled: SQLiteSpool) -> None:
    code, _, err = run_cli(capsys, "replay", "-c", config)
    assert code == 2 and err.count("\n") == 1


def test_purge_without_an_age_deletes_every_delivered_event(
        capsys: pytest.CaptureFixture[str], config: str, filled: SQLiteSpool) -> None:
    before = filled.admin.stats()
    code, out, _ = run_cli(capsys, "purge", "-c", config)
    assert code == 0 and "purged 1 delivered events" in out
    after = filled.admin.stats()
    assert after.delivered == 0
    assert (after.pending, after.dead) == (before.pending, before.dead)  # only delivered go
    assert filled.store.filter_new(["evt_0"]) == set()  # dedup survives the purge


def test_purge_with_age_zero_is_the_same(capsys: pytest.CaptureFixture[str], config: str,
                                        filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "purge", "-c", config, "--delivered-before", "0s")
    assert code == 0 and "purged 1 delivered events" in out


def test_purge_keeps_recent(capsys: pytest.CaptureFixture[str], config: str,
                            filled: SQLiteSpool) -> None:
    code, out, _ = run_cli(capsys, "purge", "-c", config, "--delivered-before", "7d")
    assert code == 0 and "purged 0 delivered events" in out


def test_purge_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str], config: str,
                                             filled: SQLiteSpool) -> None:
    code, _, err = run_cli(capsys, "purge", "-c", config, "--delivered-before", "soon")
    assert code == 2
    assert err.startswith("sidecar: error: --delivered-before: bad duration")
    assert err.count("\n") == 1


@pytest.mark.parametrize("flags", [["--dead"], ["--quarantined"], ["--dead", "--quarantined"]])
def test_an_empty_age_purges_nothing(capsys: pytest.CaptureFixture[str], config: str,
                                     filled: SQLiteSpool, flags: list[str]) -> None:
    # `--before "$KEEP"` with KEEP unset: a usage error, not "everything".
    code, out, err = run_cli(capsys, "purge", "-c", config, *flags, "--before", "")
    assert code == 2 and out == ""
    assert err.startswith("sidecar: error: --before: bad duration ''")
    stats = filled.admin.stats()
    assert (stats.dead, stats.quarantined) == (2, 2)


def test_missing_spool_file_is_reported_not_created(capsys: pytest.CaptureFixture[str],
                                                    config: str, spool_path: Path) -> None:
    code, out, err = run_cli(capsys, "stats", "-c", config)
    assert code == 1 and out == ""
    assert "does not exist" in err and err.count("\n") == 1
    assert not spool_path.exists()


@pytest.mark.parametrize("kind", ["another program's database", "an empty file", "not sqlite",
                                  "a directory"])
def test_a_file_that_is_not_a_spool_is_reported_and_left_alone(
        capsys: pytest.CaptureFixture[str], config: str, spool_path: Path, kind: str) -> None:
    spool_path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "a directory":
        spool_path.mkdir()
    elif kind == "another program's database":
        with closing(sqlite3.connect(spool_path)) as conn:
            conn.execute("create table invoices (id integer primary key, total real)")
            conn.commit()
    else:
        spool_path.write_bytes(b"" if kind == "an empty file" else b"GIF89a not a database")
    before = {p.name: p.read_bytes() for p in spool_path.parent.iterdir() if p.is_file()}
    for command in (["stats"], ["list"], ["purge"], ["replay", "--all-dead"]):
        code, out, err = run_cli(capsys, *command, "-c", config)
        assert code == 1 and out == "" and err.count("\n") == 1, (command, err)
        assert str(spool_path) in err
    after = {p.name: p.read_bytes() for p in spool_path.parent.iterdir() if p.is_file()}
    assert after == before  # no spool tables, no WAL, no lock file next to it


def test_missing_config_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "stats", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2 and err.count("\n") == 1


def test_config_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(capsys, "stats")
    assert code == 2


@pytest.mark.parametrize("text, seconds", [("7d", 604800), ("12h", 43200), ("30m", 1800),
                                           ("3600s", 3600), ("3600", 3600), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "7y", "1 2", "7 d", "\u0661\u0662"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_spool_is_usable_while_another_connection_holds_it(capsys: pytest.CaptureFixture[str],
                                                           config: str, filled: SQLiteSpool) -> None:
    # The server keeps its Spool open while an operator runs the CLI (WAL).
    started = time.monotonic()
    code, _, _ = run_cli(capsys, "replay", "-c", config, "evt_1")
    assert code == 0 and time.monotonic() - started < 5
    assert filled.admin.stats().pending == 2
