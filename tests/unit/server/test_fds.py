"""The file-descriptor budget of the connection cap (sidecar.server.fds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import Config, load_config
from sidecar.errors import ConfigError
from sidecar.server.fds import RESERVED_FDS, check_fd_budget, fds_needed, public_backlog

CONFIG = """\
tls: {cert_file: s.pem, key_file: s.key, client_ca_files: [ca.pem]}
meta: {app_secrets: ["s"], verify_token: "t"}
upstream: {url: "http://127.0.0.1:9000/events"}
limits: {max_connections: %d}
"""


def _config(tmp_path: Path, max_connections: int) -> Config:
    path = tmp_path / "sidecar.yaml"
    path.write_text(CONFIG % max_connections, encoding="utf-8")
    return load_config(path, env={})


def test_the_backlog_holds_a_reconnect_of_the_whole_cap_within_bounds() -> None:
    assert public_backlog(10) == 100 and public_backlog(1000) == 1000
    assert public_backlog(100_000) == 4096


def test_a_cap_the_limit_cannot_hold_is_refused_in_one_line_naming_the_key(tmp_path) -> None:
    config = _config(tmp_path, 1000)
    needed = fds_needed(config)
    assert needed == 1000 + 1000 + config.upstream.max_in_flight + RESERVED_FDS
    check_fd_budget(config, limit=needed)
    with pytest.raises(ConfigError, match=r"limits\.max_connections") as info:
        check_fd_budget(config, limit=needed - 1)
    assert "\n" not in str(info.value) and str(needed - 1) in str(info.value)


def test_an_upstream_pool_the_limit_cannot_hold_names_its_own_key(tmp_path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(CONFIG.replace('upstream: {url: "http://127.0.0.1:9000/events"}',
                                   'upstream: {url: "http://127.0.0.1:9000/events", '
                                   'max_in_flight: 100000}') % 10, encoding="utf-8")
    config = load_config(path, env={})
    with pytest.raises(ConfigError) as info:
        check_fd_budget(config, limit=4096)
    assert str(info.value).startswith("config key 'upstream.max_in_flight':")


def test_direct_mode_counts_both_upstream_pools(tmp_path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(CONFIG % 10 + "delivery: {mode: direct}\n", encoding="utf-8")
    direct = load_config(path, env={})
    spool = _config(tmp_path, 10)
    assert fds_needed(direct) - fds_needed(spool) == direct.upstream.max_in_flight
