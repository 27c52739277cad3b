"""``delivery.spool_url`` / ``spool_url_file``: the shared PostgreSQL spool's keys, and
that the URL's password shows nowhere (``config check`` prints it redacted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.errors import ConfigError
from sidecar.secret import Secret

BASE = {
    "tls": {"cert_file": "c.pem", "key_file": "k.pem", "client_ca_files": ["ca.pem"]},
    "meta": {"app_secrets": ["s"], "verify_token": "t"},
    "upstream": {"url": "http://127.0.0.1:9000/events"},
}


def parse(delivery: dict[str, object], tmp_path: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config({**BASE, "delivery": delivery}, base_dir=tmp_path, env=env or {})


def test_spool_url_from_the_environment(tmp_path: Path) -> None:
    config = parse({"spool_url": "postgresql://sidecar:${PW}@db/sidecar"}, tmp_path,
                   {"PW": "s3cret"})
    assert config.delivery.spool_url == Secret("postgresql://sidecar:s3cret@db/sidecar")
    assert "s3cret" not in repr(config.delivery)


def test_spool_url_file_trims_the_newline(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("postgres://sidecar:pw@db/sidecar\n")
    config = parse({"spool_url_file": "url"}, tmp_path)
    assert config.delivery.spool_url == Secret("postgres://sidecar:pw@db/sidecar")


def test_no_spool_url_is_the_sqlite_spool(tmp_path: Path) -> None:
    assert parse({}, tmp_path).delivery.spool_url is None


@pytest.mark.parametrize("delivery, message", [
    ({"spool_url": "postgresql://db/x", "spool_url_file": "f"},
     "'delivery.spool_url': give either spool_url or spool_url_file, not both"),
    ({"spool_url": "postgresql://db/x", "spool_path": "var/spool.db"},
     "'delivery.spool_url': give either spool_path (SQLite) or spool_url (PostgreSQL)"),
    ({"spool_url": "mysql://db/x"}, "'delivery.spool_url': must be a postgresql://"),
    ({"spool_url": "db.internal"}, "'delivery.spool_url': must be a postgresql://"),
    ({"spool_url": ""}, "'delivery.spool_url': must not be empty"),
])
def test_bad_spool_urls_name_the_key(tmp_path: Path, delivery: dict[str, object],
                                     message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(delivery, tmp_path)
    assert message in str(info.value)


def test_a_bad_scheme_from_a_file_names_the_file_key(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("https://sidecar:pw@db/x")
    with pytest.raises(ConfigError, match="'delivery.spool_url_file': must be") as info:
        parse({"spool_url_file": "url"}, tmp_path)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("url", ["postgresql://u:PWSECRET@[::1/x",
                                 "postgresql://u:PWSECRET@db:99999/x",
                                 "postgresql://u:PW/SECRET@db/x",
                                 # an unencoded @: libpq and a reader split these apart
                                 # differently, and a piece would show as a host or user
                                 "postgresql://u:PW@SECRET@db/x",
                                 "postgresql://db?password=PW@SECRET",
                                 "postgresql://db?password=PW:SE@CRET",
                                 "postgresql://db?sslpassword=PW@SECRET"])
def test_a_malformed_spool_url_is_one_line_without_the_password(tmp_path: Path,
                                                                url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"spool_url": url}, tmp_path)
    message = str(caught.value)
    assert message.startswith("config key 'delivery.spool_url': not a valid URL")
    assert "PW" not in message and "SECRET" not in message and "\n" not in message
