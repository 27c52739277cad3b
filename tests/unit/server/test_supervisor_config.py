"""What the supervisor hands a (replacement) ingest process, and how a process that
missed a reload while starting is caught up."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from sidecar.config import load_config
from sidecar.server import supervisor as sup

MINIMAL = """\
tls: {cert_file: s.pem, key_file: s.key, client_ca_files: [ca.pem]}
meta: {app_secrets: [one, two], verify_token: tok}
upstream: {url: "http://127.0.0.1:9000/events"}
"""


@pytest.fixture
def configs(tmp_path: Path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(MINIMAL)
    start = load_config(path, env={})
    reloaded = replace(start, tls=replace(start.tls, client_auth="required"),
                       listen=replace(start.listen, port=1234),
                       meta=replace(start.meta, app_secrets=start.meta.app_secrets[:1]))
    return start, reloaded


def _fake(start, live):
    return SimpleNamespace(config=start,
                           parts=SimpleNamespace(live=SimpleNamespace(config=live)),
                           _ready_pids=set(), _spawned_with={})


def test_a_replacement_gets_the_reloaded_tls_and_meta_but_the_start_up_rest(configs):
    start, reloaded = configs
    child = sup.Supervisor.child_config(_fake(start, reloaded))  # type: ignore[arg-type]
    assert child.tls == reloaded.tls and child.meta == reloaded.meta
    assert child.listen == start.listen  # a port change needs a restart, not a replacement
    assert child.delivery == start.delivery


def test_a_process_that_missed_a_reload_while_starting_gets_a_sighup(configs, monkeypatch):
    start, reloaded = configs
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(sup.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    fake = _fake(start, reloaded)
    fake._spawned_with = {11: start, 12: reloaded}  # 11 was spawned before the reload
    sup.Supervisor._on_ready(fake, 11)  # type: ignore[arg-type]
    sup.Supervisor._on_ready(fake, 12)  # type: ignore[arg-type]
    assert sent == [(11, signal.SIGHUP)]
    assert fake._ready_pids == {11, 12} and fake._spawned_with == {}
