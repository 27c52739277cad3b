"""``sidecar spool …`` and ``config check`` on the PostgreSQL spool, in process: every
command works on the shared database, a database without the spool is reported and
left alone, and the URL's password is never printed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest
from spool_contract import ack, claim, dead, make_event, make_quarantined, sharing_events

from sidecar.cli import main
from sidecar.spool import PostgresSpool

CONFIG = """\
tls: {{cert_file: c.pem, key_file: k.pem, client_ca_files: [ca.pem]}}
meta: {{app_secrets: ["s"], verify_token: "t"}}
upstream: {{url: "http://127.0.0.1:9000/events"}}
delivery:
  spool_url: "{url}"
"""


@pytest.fixture
def config(tmp_path: Path, pg_url: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(CONFIG.format(url=pg_url))
    return path


def test_a_database_without_the_spool_is_reported_not_created(
        config: Path, capsys: pytest.CaptureFixture[str], postgres) -> None:  # type: ignore[no-untyped-def]
    assert main(["spool", "stats", "-c", str(config)]) != 0
    err = capsys.readouterr().err
    assert "no sidecar spool" in err and err.count("\n") == 1
    assert postgres.password not in err and "postgresql://postgres:***@" in err


def test_every_spool_command_on_the_shared_spool(
        config: Path, pg_url: str, capsys: pytest.CaptureFixture[str], postgres) -> None:  # type: ignore[no-untyped-def]
    async def seed() -> None:
        spool = PostgresSpool(pg_url)
        spool.take_ownership()
        await spool.add_many([([make_event(i) for i in range(3)], [])])
        await claim(spool, 1)
        await dead(spool, "evt_0", error="upstream answered 500")
        spool.close()

    asyncio.run(seed())  # the CLI runs its own event loop

    def run(*args: str) -> str:
        assert main(["spool", *args, "-c", str(config)]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    stats = json.loads(run("stats", "--json"))
    assert (stats["pending"], stats["dead"]) == (2, 1)
    assert "evt_0" in run("list", "--dead")
    assert "replayed 1 dead events" in run("replay", "--all-dead")
    assert json.loads(run("stats", "--json"))["pending"] == 3
    assert "purged 0 delivered events" in run("purge")
    out = run("list", "--json")
    assert len(json.loads(out)["events"]) == 3
    assert postgres.password not in out


def test_purge_variants_on_the_shared_spool(
        config: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def seed() -> None:
        spool = PostgresSpool(pg_url)
        spool.take_ownership()
        await spool.add_many([(sharing_events(3), [make_quarantined({"a": 1})])])
        await claim(spool, 3)
        await ack(spool, ["evt_s0"])
        await dead(spool, "evt_s1", error="upstream answered 500")
        await dead(spool, "evt_s2", error="upstream answered 500")
        spool.close()

    asyncio.run(seed())

    def run(*args: str) -> str:
        assert main(["spool", "purge", *args, "-c", str(config)]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    def stats() -> dict[str, int]:
        assert main(["spool", "stats", "--json", "-c", str(config)]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    assert run("--dead", "--quarantined", "--before", "1h") == (
        "purged 0 dead letters\npurged 0 quarantined changes\n")
    assert run("--dead") == "purged 2 dead letters\n"
    counts = stats()
    assert (counts["dead"], counts["delivered"], counts["quarantined"]) == (0, 1, 1)
    assert run("--quarantined") == "purged 1 quarantined changes\n"
    assert run("--dead", "--delivered-before", "0") == (
        "purged 1 delivered events\npurged 0 dead letters\n")
    assert stats()["delivered"] == 0

    async def left() -> tuple[set[str], int]:
        spool = PostgresSpool(pg_url)
        try:
            return (await spool.filter_new(["evt_s1", "evt_new"]),
                    len(await spool.list_quarantined()))
        finally:
            spool.close()

    assert asyncio.run(left()) == ({"evt_new"}, 0)  # purged ids still block repeats
    with psycopg.connect(pg_url) as conn:  # the last bodies went with their parts
        assert conn.execute("select count(*) from parts").fetchone() == (0,)


def test_config_check_shows_the_url_redacted(tmp_path: Path, config: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             postgres) -> None:  # type: ignore[no-untyped-def]
    from sidecar.config import load_config
    from sidecar.cli import config_cmd

    assert load_config(config).delivery.spool_url is not None
    # The TLS files of this minimal config do not exist: check the spool line only.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config_cmd, "load_material", _fake_material)
        patch.setattr(config_cmd, "build_context", lambda *_, **__: None)
        assert main(["config", "check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "spool    postgresql://postgres:***@127.0.0.1" in out
    assert postgres.password not in out


def _fake_material(tls):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone
    from types import SimpleNamespace

    leaf = SimpleNamespace(subject="CN=test", not_after=datetime(2030, 1, 1, tzinfo=timezone.utc))
    return SimpleNamespace(server_chain=[leaf], client_cas=[object()])
