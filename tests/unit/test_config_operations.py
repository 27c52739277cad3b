"""Config values that used to pass the loader and then fail (or misbehave) in `serve`:
each is now one ConfigError naming the key, in `config check` and at start alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.errors import ConfigError
from test_config import ENV, MINIMAL, _error, _write

URL = "  url: http://127.0.0.1:9000/events\n"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1/\u2603",          # non-ASCII path: UnicodeEncodeError at the first send
    "http://b\u00fccher.example/events",  # an IDN host must be written as xn--
    "http://127.0.0.1:1/a\\x7fb",          # (a YAML escape: DEL)
])
def test_upstream_url_must_be_ascii(tmp_path, url):
    message = _error(tmp_path, MINIMAL.replace(URL, f'  url: "{url}"\n'))
    assert message.startswith("config key 'upstream.url': must be ASCII")


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1:9000/events",
                                 "https://token@backend.internal/events"])
def test_upstream_url_credentials_are_refused_never_echoed(tmp_path, url):
    message = _error(tmp_path, MINIMAL.replace(URL, f'  url: "{url}"\n'))
    assert message.startswith("config key 'upstream.url': must not carry credentials")
    assert "pw" not in message and "token" not in message


def test_an_at_sign_in_the_upstream_path_is_fine(tmp_path):
    text = MINIMAL.replace(URL, '  url: "http://127.0.0.1:9000/events/@me"\n')
    assert load_config(_write(tmp_path, text), env=ENV).upstream.url.endswith("/@me")


@pytest.mark.parametrize("path", ["/webhooks/whatsapp?x=1", "/web hooks", "/hooks#frag",
                                  "/h\u00e9", "/bad%zz", "/tab\there"])
def test_listen_path_that_can_never_match_is_refused(tmp_path, path):
    message = _error(tmp_path, MINIMAL + f'listen: {{path: "{path}"}}\n')
    assert message.startswith("config key 'listen.path': must be a URL path")


@pytest.mark.parametrize("path", ["/webhooks/whatsapp", "/a-b_c.d~e/f;g=h,i", "/x%20y",
                                  "/@me:1"])
def test_listen_path_with_url_characters_is_accepted(tmp_path, path):
    assert load_config(_write(tmp_path, MINIMAL + f'listen: {{path: "{path}"}}\n'),
                       env=ENV).listen.path == path


@pytest.mark.parametrize("section, key, value", [
    ("tls", "reload_interval_s", "1e-300"),
    ("tls", "reload_interval_s", "0.01"),
    ("upstream", "timeout_s", "1e-300"),
    ("limits", "header_timeout_s", "1e-300"),
    ("limits", "body_timeout_s", "1e-300"),
    ("limits", "keepalive_timeout_s", "1e-300"),
    ("delivery", "backoff_initial_s", "1e-300"),
])
def test_timer_durations_too_small_to_mean_anything_are_refused(tmp_path, section, key,
                                                                 value):
    text = MINIMAL.replace(f"{section}:\n", f"{section}:\n  {key}: {value}\n") \
        if f"{section}:\n" in MINIMAL else MINIMAL + f"{section}: {{{key}: {value}}}\n"
    assert f"config key '{section}.{key}': must be >=" in _error(tmp_path, text)


def test_retention_and_budget_keys(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), env=ENV)
    assert config.delivery.dead_retention_s == 30 * 86400
    assert config.limits.max_inflight_body_bytes == 256 * 1024 * 1024
    assert "'delivery.dead_retention_s': must be >= delivery.max_age_s" in _error(
        tmp_path, MINIMAL + "delivery: {max_age_s: 86400, dead_retention_s: 3600}\n")
    assert "'limits.max_inflight_body_bytes': must be >= 3145728" in _error(
        tmp_path, MINIMAL + "limits: {max_inflight_body_bytes: 1048576}\n")
    assert "'delivery.spool_reserve_bytes': must be >=" in _error(
        tmp_path, MINIMAL + "delivery: {spool_reserve_bytes: 10}\n")


def test_relative_paths_follow_the_config_path_as_given_not_its_symlink(tmp_path):
    release = tmp_path / "releases" / "v1"
    release.mkdir(parents=True)
    (release / "sidecar.yaml").write_text(MINIMAL)
    etc = tmp_path / "etc"
    etc.mkdir()
    os.symlink(release / "sidecar.yaml", etc / "sidecar.yaml")
    config = load_config(etc / "sidecar.yaml", env=ENV)
    assert config.delivery.spool_path == etc / "var" / "spool.db"
    assert config.tls.cert_file == etc / "certs" / "server.pem"


def test_relative_config_path_is_made_absolute_against_the_working_dir(tmp_path,
                                                                       monkeypatch):
    _write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("sidecar.yaml"), env=ENV)
    assert config.delivery.spool_path == tmp_path / "var" / "spool.db"
    with pytest.raises(ConfigError):
        load_config(Path("missing.yaml"), env=ENV)
