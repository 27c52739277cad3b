"""The config loader: every problem is one ConfigError naming the key at fault."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import META_CLIENT_NAME, load_config
from sidecar.errors import ConfigError

MINIMAL = """\
tls:
  cert_file: certs/server.pem
  key_file: certs/server.key
  client_ca_files: [certs/ca.pem]
meta:
  app_secrets: ["${APP_SECRET}"]
  verify_token: "${VERIFY_TOKEN}"
upstream:
  url: http://127.0.0.1:9000/events
"""
ENV = {"APP_SECRET": "s3cret", "VERIFY_TOKEN": "tok"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), env=ENV if env is None else env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_config_gets_the_documented_defaults(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), env=ENV)
    assert config.listen.port == 8443 and config.listen.path == "/webhooks/whatsapp"
    assert config.tls.allowed_client_names == (META_CLIENT_NAME,)
    assert config.tls.client_auth == "required" and config.tls.reload_interval_s == 30
    assert config.delivery.mode == "spool" and config.delivery.max_attempts == 20
    assert config.limits.max_body_bytes == 3 * 1024 * 1024
    assert config.admin.host == "127.0.0.1" and config.admin.port == 9090
    assert config.meta.app_secrets[0].reveal() == "s3cret"
    # Relative paths are relative to the config file's folder.
    assert config.tls.cert_file == tmp_path / "certs" / "server.pem"
    assert config.delivery.spool_path == tmp_path / "var" / "spool.db"


def test_example_config_parses_and_documents_every_key(tmp_path):
    example = Path(__file__).resolve().parents[2] / "config" / "sidecar.example.yaml"
    config = load_config(example, env={"META_APP_SECRET": "a", "META_VERIFY_TOKEN": "b",
                                       "UPSTREAM_SIGNING_SECRET": "c"})
    text = example.read_text()
    for section in ("listen", "tls", "meta", "upstream", "delivery", "limits", "admin",
                    "graph", "logging"):
        for key in vars(getattr(config, section)):
            assert f"{key}:" in text, f"{section}.{key} is not documented in the example"


@pytest.mark.parametrize("text, expected", [
    (MINIMAL + "surprise: 1\n", "config key 'surprise': unknown key"),
    (MINIMAL.replace("upstream:\n", "upstream:\n  retries: 3\n"), "'upstream.retries': unknown key"),
    (MINIMAL + "listen: {port: eighty}\n", "'listen.port': must be an integer"),
    (MINIMAL + "listen: {port: 70000}\n", "'listen.port'"),
    (MINIMAL + "delivery: {mode: fast}\n", "'delivery.mode': must be one of spool, direct"),
    (MINIMAL + "tls2: {}\n", "'tls2': unknown key"),
    (MINIMAL + "limits: {max_body_bytes: true}\n", "'limits.max_body_bytes': must be an integer"),
    (MINIMAL + "upstream2: 1\n", "'upstream2': unknown key"),
    (MINIMAL.replace("upstream:\n", "upstream:\n  timeout_s: .nan\n"), "'upstream.timeout_s': must be a number"),
    (MINIMAL.replace("upstream:\n", "upstream:\n  timeout_s: 'inf'\n"), "'upstream.timeout_s': must be a number"),
    (MINIMAL.replace("  url: http://127.0.0.1:9000/events\n", "  url: ftp://x\n"), "'upstream.url'"),
    (MINIMAL.replace("  url: http://127.0.0.1:9000/events\n", "  url: http://h:99999/\n"),
     "'upstream.url'"),
    (MINIMAL.replace("  url: http://127.0.0.1:9000/events\n", "  url: http://h:abc/\n"),
     "'upstream.url'"),
    (MINIMAL.replace("limits", "limits") + "limits: {max_connections: " + "9" * 400 + "}\n",
     "'limits.max_connections'"),
    (MINIMAL + "delivery: {backoff_initial_s: 10, backoff_max_s: 1}\n", "'delivery.backoff_max_s'"),
    (MINIMAL.replace("upstream:\n", "upstream:\n  ca_file: certs/up.pem\n"),
     "config key 'upstream.ca_file': only used with an https:// upstream.url"),
    (MINIMAL.replace('  verify_token: "${VERIFY_TOKEN}"\n', ""), "'meta.verify_token': required"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    # A lone string where a list belongs is a wrong type, not a list of one.
    (MINIMAL.replace('["${APP_SECRET}"]', '"${APP_SECRET}"'),
     "'meta.app_secrets': must be a list of strings"),
    (MINIMAL.replace("[certs/ca.pem]", "certs/ca.pem"),
     "'tls.client_ca_files': must be a list of strings"),
    (MINIMAL.replace("tls:\n", "tls:\n  allowed_client_names: client.webhooks.fbclientcerts.com\n"),
     "'tls.allowed_client_names': must be a list of strings"),
])
def test_bad_values_name_the_key(tmp_path, text, expected):
    assert expected in _error(tmp_path, text)


def test_missing_environment_variable_names_key_and_variable(tmp_path):
    message = _error(tmp_path, MINIMAL, env={"APP_SECRET": "x"})
    assert message == ("config key 'meta.verify_token': environment variable VERIFY_TOKEN "
                       "is not set")


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", env=ENV)
    assert "not valid YAML at line 2" in _error(tmp_path, "a: 1\n  b: [\n")


@pytest.mark.parametrize("extra, key, lines", [
    # A second section: PyYAML would keep only the last, silently.
    ("tls:\n  client_auth: optional\n", "tls", "1 and 10"),
    ("meta:\n  app_secrets: [other]\n", "meta", "5 and 10"),
])
def test_a_key_given_twice_is_an_error_naming_it(tmp_path, extra, key, lines):
    assert _error(tmp_path, MINIMAL + extra) == f"config key '{key}': given twice (lines {lines})"


def test_a_nested_key_given_twice_is_named_with_its_section(tmp_path):
    text = MINIMAL.replace('  verify_token: "${VERIFY_TOKEN}"\n',
                           '  verify_token: "${VERIFY_TOKEN}"\n  app_secrets: [second]\n')
    assert _error(tmp_path, text) == "config key 'meta.app_secrets': given twice (lines 6 and 8)"


@pytest.mark.parametrize("merge", ["{timeout_s: 5, timeout_s: 60}",
                                   "[{batch_max: 1}, {timeout_s: 5, timeout_s: 60}]"])
def test_a_key_given_twice_inside_a_merge_is_an_error_too(tmp_path, merge):
    text = MINIMAL.replace("  url: http://127.0.0.1:9000/events\n",
                           f"  url: http://127.0.0.1:9000/events\n  <<: {merge}\n")
    assert _error(tmp_path, text).startswith("config key 'upstream.timeout_s': given twice")


def test_merge_keys_and_aliases_are_still_yaml(tmp_path):
    # A key merged in with << may be overridden, and aliases are walked once each (a
    # config of nested aliases does not make the check take exponential time).
    text = MINIMAL + ("limits: &l {max_connections: 10}\n"
                      "admin: {<<: {host: 127.0.0.1, port: 1}, port: 9091}\n"
                      "x0: &a0 [1, 2]\n" + "".join(
                          f"x{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
                          for i in range(1, 40)))
    # (x0… are unknown keys, refused after the check: the walk itself finished.)
    assert "'x0'" in _error(tmp_path, text)
    config = load_config(_write(tmp_path, MINIMAL + "admin: {<<: {host: 127.0.0.1, port: 1},"
                                " port: 9091}\n"), env=ENV)
    assert config.admin.port == 9091


def test_secret_file_forms(tmp_path):
    (tmp_path / "secret.txt").write_text("from-file\n")
    (tmp_path / "token.txt").write_text("tok-file")
    text = MINIMAL.replace('  app_secrets: ["${APP_SECRET}"]\n  verify_token: "${VERIFY_TOKEN}"\n',
                           "  app_secrets_files: [secret.txt]\n  verify_token_file: token.txt\n")
    config = load_config(_write(tmp_path, text), env={})
    assert config.meta.app_secrets[0].reveal() == "from-file"  # trailing newline trimmed
    assert config.meta.verify_token.reveal() == "tok-file"


def test_both_forms_of_a_secret_is_an_error(tmp_path):
    (tmp_path / "token.txt").write_text("x")
    text = MINIMAL.replace('  verify_token: "${VERIFY_TOKEN}"\n',
                           '  verify_token: "${VERIFY_TOKEN}"\n  verify_token_file: token.txt\n')
    assert "either verify_token or verify_token_file" in _error(tmp_path, text)


@pytest.mark.parametrize("form", ["inline", "file"])
def test_whsec_signing_secret_must_be_base64(tmp_path, form):
    bad, good = "whsec_not base64!", "whsec_" + "QUJD" * 8
    def config_text(secret: str) -> str:
        if form == "file":
            (tmp_path / "signing.txt").write_text(secret + "\n")
            line = "  signing_secret_file: signing.txt\n"
        else:
            line = f'  signing_secret: "{secret}"\n'
        return MINIMAL.replace("upstream:\n", "upstream:\n" + line)
    key = "upstream.signing_secret_file" if form == "file" else "upstream.signing_secret"
    message = _error(tmp_path, config_text(bad))
    assert message.startswith(f"config key '{key}': a whsec_ secret must be base64")
    assert "not base64!" not in message  # the secret itself is never echoed
    config = load_config(_write(tmp_path, config_text(good)), env=ENV)
    assert config.upstream.signing_secret is not None
    assert config.upstream.signing_secret.reveal() == good


def test_missing_secret_file_names_key_and_file(tmp_path):
    text = MINIMAL.replace('  verify_token: "${VERIFY_TOKEN}"\n', "  verify_token_file: gone.txt\n")
    message = _error(tmp_path, text)
    assert "'meta.verify_token_file'" in message and "gone.txt" in message


def test_secrets_never_show_in_repr(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), env=ENV)
    assert "s3cret" not in repr(config) and "tok'" not in repr(config)


def test_pins_are_normalized_and_checked(tmp_path):
    pin = "AB:" * 31 + "AB"
    config = load_config(_write(tmp_path, MINIMAL.replace(
        "  client_ca_files: [certs/ca.pem]\n",
        f"  client_ca_files: [certs/ca.pem]\n  client_ca_sha256: ['{pin}']\n")), env=ENV)
    assert config.tls.client_ca_sha256 == ("ab" * 32,)
    assert "'tls.client_ca_sha256[0]'" in _error(tmp_path, MINIMAL.replace(
        "  client_ca_files: [certs/ca.pem]\n",
        "  client_ca_files: [certs/ca.pem]\n  client_ca_sha256: [deadbeef]\n"))


def test_upstream_ca_file_is_relative_to_the_config_folder(tmp_path):
    text = MINIMAL.replace("  url: http://127.0.0.1:9000/events\n",
                           "  url: https://backend.internal/events\n  ca_file: certs/up.pem\n")
    config = load_config(_write(tmp_path, text), env=ENV)
    assert config.upstream.ca_file == tmp_path / "certs" / "up.pem"
    assert load_config(_write(tmp_path, MINIMAL), env=ENV).upstream.ca_file is None


@pytest.mark.parametrize("value", ["whsec_", "whsec_${EMPTY}"])
def test_a_whsec_secret_of_an_empty_key_is_refused(tmp_path, value):
    # HMAC with an empty key: anyone could forge the upstream's signatures.
    text = MINIMAL.replace("upstream:\n", f'upstream:\n  signing_secret: "{value}"\n')
    message = _error(tmp_path, text, env={**ENV, "EMPTY": ""})
    assert message.startswith("config key 'upstream.signing_secret': a whsec_ secret must be")


@pytest.mark.parametrize("written, read_as", [("012345", "int"), ("0x1F", "int"),
                                              ("1:30", "int"), ("1.10", "float"),
                                              ("1_000", "int"), ("true", "bool")])
def test_a_secret_yaml_reads_as_a_number_is_refused_not_changed(tmp_path, written, read_as):
    # Unquoted, YAML 1.1 turns 012345 into 5349: the token would silently not match.
    text = MINIMAL.replace('verify_token: "${VERIFY_TOKEN}"', f"verify_token: {written}")
    message = _error(tmp_path, text)
    assert message == (f"config key 'meta.verify_token': must be a string; YAML read "
                       f"{read_as} here: put the value in quotes")


@pytest.mark.parametrize("url", ["http://[::1", "not a url", "ftp://graph.example", "https://",
                                 "http://xn--"])
def test_a_bad_graph_base_url_names_the_key(tmp_path, url):
    message = _error(tmp_path, MINIMAL + f'graph: {{base_url: "{url}"}}\n')
    assert message.startswith("config key 'graph.base_url': must")


@pytest.mark.parametrize("section", ["listen", "admin"])
@pytest.mark.parametrize("host", ["", " ", "a b"])
def test_an_empty_host_names_the_key(tmp_path, section, host):
    message = _error(tmp_path, MINIMAL + f'{section}: {{host: "{host}"}}\n')
    assert message.startswith(f"config key '{section}.host': must be an address")


def test_a_file_that_is_not_a_mapping_says_so(tmp_path):
    assert _error(tmp_path, "- listen\n- tls\n").startswith(
        "the config file must be a YAML mapping")


@pytest.mark.parametrize("make", ["fifo", "device", "huge"])
def test_a_secret_file_that_is_not_a_small_regular_file_is_refused_at_once(tmp_path, make):
    # A FIFO blocked the read until someone wrote to it (config check and reloads hung),
    # /dev/zero was read until memory ran out.
    target = tmp_path / "token"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "device":
        target.symlink_to("/dev/zero")
    else:
        target.write_bytes(b"x" * (64 * 1024 + 1))
    text = MINIMAL.replace('  verify_token: "${VERIFY_TOKEN}"\n', "  verify_token_file: token\n")
    message = _error(tmp_path, text)  # (the old code never returned for the FIFO)
    reason = "larger than 65536 bytes" if make == "huge" else "not a regular file"
    assert message == f"config key 'meta.verify_token_file': cannot read file {target} ({reason})"


def test_a_config_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "sidecar.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"unreadable \(not a regular file\)"):
        load_config(fifo, env=ENV)
    with pytest.raises(ConfigError, match=r"unreadable \(is a directory\)"):
        load_config(tmp_path, env=ENV)
