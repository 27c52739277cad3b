"""`sidecar spool purge --dead / --quarantined / --before AGE`, and dead letters and
quarantined changes in `spool stats`."""

from __future__ import annotations

import json

from test_spool_cli import config, filled, run_cli, spool_path  # noqa: F401  (fixtures)


def test_purge_dead_deletes_dead_letters_only(capsys, config, filled):  # noqa: F811
    code, out, _ = run_cli(capsys, "purge", "-c", config, "--dead")
    assert code == 0 and out == "purged 2 dead letters\n"
    stats = filled.admin.stats()
    assert (stats.dead, stats.delivered, stats.pending, stats.quarantined) == (0, 1, 1, 2)
    assert filled.store.filter_new(["evt_1"]) == set()  # the id still blocks a repeat


def test_purge_quarantined_and_dead_together(capsys, config, filled):  # noqa: F811
    code, out, _ = run_cli(capsys, "purge", "-c", config, "--dead", "--quarantined")
    assert code == 0
    assert out == "purged 2 dead letters\npurged 2 quarantined changes\n"
    assert filled.admin.list_quarantined() == []
    assert filled.admin.stats().delivered == 1  # not selected


def test_purge_before_keeps_younger_rows(capsys, config, filled):  # noqa: F811
    code, out, _ = run_cli(capsys, "purge", "-c", config, "--dead", "--quarantined",
                           "--before", "1h")
    assert code == 0 and "purged 0 dead letters" in out and "purged 0 quarantined" in out
    assert filled.admin.stats().dead == 2


def test_purge_delivered_before_still_works_beside_dead(capsys, config, filled):  # noqa: F811
    code, out, _ = run_cli(capsys, "purge", "-c", config, "--dead", "--delivered-before", "0")
    assert code == 0 and out == "purged 1 delivered events\npurged 2 dead letters\n"


def test_before_and_delivered_before_together_is_a_usage_error(capsys, config,  # noqa: F811
                                                               filled):  # noqa: F811
    code, _, err = run_cli(capsys, "purge", "-c", config, "--before", "1d",
                           "--delivered-before", "1d")
    assert code == 2 and "not both" in err and len(err.splitlines()) == 1
    assert filled.admin.stats().delivered == 1


def test_absurd_age_is_a_usage_error(capsys, config, filled):  # noqa: F811
    code, _, err = run_cli(capsys, "purge", "-c", config, "--dead", "--before", "9" * 400)
    assert code == 2 and "bad duration" in err


def test_stats_count_dead_quarantined_and_the_disk(capsys, config, filled):  # noqa: F811
    code, out, _ = run_cli(capsys, "stats", "-c", config, "--json")
    stats = json.loads(out)
    assert (stats["dead"], stats["quarantined"], stats["disk_full"]) == (2, 2, False)
    code, out, _ = run_cli(capsys, "stats", "-c", config)
    assert "disk" in out and "ok" in out
