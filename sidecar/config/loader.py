"""The config file → ``Config``: parse the YAML, then each section's keys and rules."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sidecar.config.model import (
    META_CLIENT_NAME,
    AdminConfig,
    Config,
    DeliveryConfig,
    GraphConfig,
    LimitsConfig,
    ListenConfig,
    LoggingConfig,
    MetaConfig,
    TLSConfig,
    UpstreamConfig,
)
from sidecar.config.reader import Reader, Section
from sidecar.config.files import CONFIG_MAX_BYTES, read_file, why_unreadable
from sidecar.config.spool_url import SCHEMES, url_problem
from sidecar.errors import ConfigError
from sidecar.secret import Secret, standard_webhooks_key

__all__ = ["load_config", "parse_config"]


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the config file at ``path``."""
    path = Path(path)
    try:
        text = read_file(path, CONFIG_MAX_BYTES).decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path}: not found") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path}: unreadable ({why_unreadable(exc)})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: unreadable (not UTF-8)") from exc
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from exc
    # Relative paths are relative to the folder of the path as given, symlinks not
    # followed: a config that is a symlink (a Kubernetes ConfigMap's ..data/, a release
    # symlink) must not move the spool into whatever folder the link points to today.
    base_dir = Path(os.path.abspath(path)).parent
    return parse_config(raw, base_dir=base_dir, env=os.environ if env is None else env,
                        path=path)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, parsed once: the node tree is checked for repeated keys, then
    built into values."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _refuse_repeated_keys(node)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _refuse_repeated_keys(node: yaml.Node | None, where: str = "",
                          walked: set[int] | None = None) -> None:
    """A key given twice in one mapping is an error naming it: YAML forbids it, and
    PyYAML would keep the last silently (a second ``tls:`` section, a second
    ``app_secrets``).  Keys merged in with ``<<`` may be overridden, as YAML means.
    Each node is walked once, however many aliases name it."""
    walked = set() if walked is None else walked
    if node is None or id(node) in walked:
        return
    walked.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_repeated_keys(item, f"{where}[{i}]", walked)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:merge":
                # What is merged in may override this mapping's keys, but not repeat its
                # own: an inline ``<<: {timeout_s: 5, timeout_s: 60}`` is refused too.
                merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
                for source in merged:
                    _refuse_repeated_keys(source, where, walked)
                continue
            if not isinstance(key, yaml.ScalarNode):
                continue
            name = f"{where}.{key.value}" if where else str(key.value)
            line = key.start_mark.line + 1
            if key.value in seen:
                raise ConfigError(f"config key '{name}': given twice (lines {seen[key.value]}"
                                  f" and {line})")
            seen[key.value] = line
            _refuse_repeated_keys(value, name, walked)


def parse_config(raw: Any, *, base_dir: Path, env: Mapping[str, str],
                 path: Path | None = None) -> Config:
    reader = Reader(base_dir, env)
    root = Section(raw, "", reader)
    root.check_unknown({"listen", "tls", "meta", "upstream", "delivery", "limits", "admin",
                        "graph", "logging"})
    return Config(
        path=path or base_dir / "sidecar.yaml",
        listen=_listen(root.section("listen")),
        tls=_tls(root.section("tls")),
        meta=_meta(root.section("meta")),
        upstream=_upstream(root.section("upstream")),
        delivery=_delivery(root.section("delivery")),
        limits=_limits(root.section("limits")),
        admin=_admin(root.section("admin")),
        graph=_graph(root.section("graph")),
        logging=_logging(root.section("logging")),
    )


def _listen(s: Section) -> ListenConfig:
    s.check_unknown({"host", "port", "path"})
    path = s.string("path", ListenConfig.path)
    if not path.startswith("/"):
        raise ConfigError(f"config key '{s.key('path')}': must start with /")
    if not _PATH.fullmatch(path):
        # The path is compared with the raw request target: a space, '?', '#', a
        # non-ASCII character or a stray '%' can never arrive as written.
        raise ConfigError(f"config key '{s.key('path')}': must be a URL path (letters, "
                          "digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ / or %XX; no "
                          "spaces, '?' or '#')")
    return ListenConfig(host=_host(s, ListenConfig.host),
                        port=_port(s, "port", ListenConfig.port), path=path)


# RFC 3986 path characters: unreserved, sub-delims, ':', '@', '/', and %XX escapes.
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})+")
# Durations that drive a timer: a positive value too small to mean anything (1e-300)
# would make that timer fire without pause.
_MIN_TIMER_S = 0.001
_MIN_RELOAD_S = 0.1


def _port(s: Section, k: str, default: int) -> int:
    port = s.integer(k, default)
    if port > 65535:
        raise ConfigError(f"config key '{s.key(k)}': must be a TCP port (0-65535)")
    return port


def _tls(s: Section) -> TLSConfig:
    s.check_unknown({"cert_file", "key_file", "client_ca_files", "allowed_client_names",
                     "client_auth", "reload_interval_s", "client_ca_sha256"})
    names = s.string_list("allowed_client_names", (META_CLIENT_NAME,))
    if not names or any(not n for n in names):
        raise ConfigError(f"config key '{s.key('allowed_client_names')}': "
                          "must list at least one non-empty name")
    cas = s.path_list("client_ca_files")
    if not cas:
        raise ConfigError(f"config key '{s.key('client_ca_files')}': list at least one CA file")
    pins = tuple(p.replace(":", "").lower() for p in s.string_list("client_ca_sha256", ()))
    for i, pin in enumerate(pins):
        if not re.fullmatch(r"[0-9a-f]{64}", pin):
            raise ConfigError(f"config key '{s.key('client_ca_sha256')}[{i}]': "
                              "must be a SHA-256 fingerprint (64 hex digits)")
    return TLSConfig(
        cert_file=s.path("cert_file"),
        key_file=s.path("key_file"),
        client_ca_files=cas,
        allowed_client_names=names,
        client_auth=s.string("client_auth", "required", choices=("required", "optional")),
        reload_interval_s=s.number("reload_interval_s", TLSConfig.reload_interval_s,
                                   minimum=_MIN_RELOAD_S),
        client_ca_sha256=pins,
    )


def _meta(s: Section) -> MetaConfig:
    s.check_unknown({"app_secrets", "app_secrets_files", "verify_token", "verify_token_file",
                     "unknown_fields"})
    token = s.secret("verify_token", required=True)
    assert token is not None
    return MetaConfig(
        app_secrets=s.secret_list("app_secrets", "app_secrets_files"),
        verify_token=token,
        unknown_fields=s.string("unknown_fields", "forward", choices=("forward", "drop")),
    )


def _upstream(s: Section) -> UpstreamConfig:
    s.check_unknown({"url", "timeout_s", "signing_secret", "signing_secret_file", "batch_max",
                     "max_in_flight", "ca_file"})
    url = s.string("url", required=True)
    problem = http_url_problem(url)
    if problem is not None:
        raise ConfigError(f"config key '{s.key('url')}': {problem}")
    if "@" in urlsplit(url).netloc:
        # Never printed, never silently dropped: the upstream authenticates the sidecar
        # by upstream.signing_secret.
        raise ConfigError(f"config key '{s.key('url')}': must not carry credentials "
                          "(user:password@); sign requests with upstream.signing_secret")
    ca_file = s.path("ca_file") if s.has("ca_file") else None
    if ca_file is not None and urlsplit(url).scheme != "https":
        raise ConfigError(f"config key '{s.key('ca_file')}': only used with an https:// "
                          f"{s.key('url')}")
    signing_secret = s.secret("signing_secret", required=False)
    if signing_secret is not None:
        try:  # so that ``config check`` fails where ``serve`` would
            standard_webhooks_key(signing_secret)
        except ValueError:
            form = "signing_secret_file" if s.has("signing_secret_file") else "signing_secret"
            raise ConfigError(f"config key '{s.key(form)}': a whsec_ secret must be base64 "
                              "of a non-empty key after the prefix (Standard Webhooks)"
                              ) from None
    return UpstreamConfig(
        url=url,
        timeout_s=s.number("timeout_s", UpstreamConfig.timeout_s, minimum=_MIN_TIMER_S),
        signing_secret=signing_secret,
        batch_max=s.integer("batch_max", UpstreamConfig.batch_max, minimum=1),
        max_in_flight=s.integer("max_in_flight", UpstreamConfig.max_in_flight, minimum=1),
        ca_file=ca_file,
    )


def http_url_problem(url: str, *, schemes: tuple[str, ...] = ("http", "https"),
                     secret_in_requests: bool = False) -> str | None:
    """Why ``url`` cannot be sent to as written, or None: an http(s) URL with a host, a
    port from 1 to 65535 if given, and ASCII without spaces or control characters (a
    request line is ASCII: an IDN host is written xn--, the rest percent-encoded).
    ``secret_in_requests`` (the Graph API's bearer token): plain http only to a loopback
    address, where a local fake or proxy listens."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when not a number or out of range
    except ValueError:
        port, parts = None, None
    if parts is None or parts.scheme not in schemes or not parts.hostname or port == 0 \
            or any(c.isspace() for c in url):
        kinds = " or ".join(f"{scheme}://" for scheme in schemes)
        return f"must be an {kinds} URL with a host (and a port from 1 to 65535, if given)"
    if not url.isascii() or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        return ("must be ASCII without spaces (percent-encode other characters, write an "
                "IDN host as xn--)")
    try:
        parts.hostname.encode("ascii").decode("idna")
    except UnicodeError:
        return "must have a valid host name (an xn-- label that does not decode)"
    if secret_in_requests and parts.scheme == "http" and not _loopback(parts.hostname):
        return ("must be an https:// URL (http:// would send the access token in the "
                "clear; it is allowed to a loopback address only)")
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _delivery(s: Section) -> DeliveryConfig:
    s.check_unknown({"mode", "spool_path", "max_attempts", "max_age_s", "backoff_initial_s",
                     "backoff_max_s", "dedup_retention_s", "max_spool_events",
                     "dead_retention_s", "spool_reserve_bytes", "spool_url",
                     "spool_url_file"})
    d = DeliveryConfig
    initial = s.number("backoff_initial_s", d.backoff_initial_s, minimum=_MIN_TIMER_S)
    maximum = s.number("backoff_max_s", d.backoff_max_s, minimum=_MIN_TIMER_S)
    if maximum < initial:
        raise ConfigError(f"config key '{s.key('backoff_max_s')}': must be >= backoff_initial_s")
    max_age_s = s.number("max_age_s", d.max_age_s, exclusive=True)
    dead_retention_s = s.number("dead_retention_s", d.dead_retention_s, exclusive=True)
    if dead_retention_s < max_age_s:
        # Both count from receipt (or the last replay): a shorter retention would delete
        # an event that dies of old age as soon as it dies.
        raise ConfigError(f"config key '{s.key('dead_retention_s')}': must be >= "
                          f"{s.key('max_age_s')} ({max_age_s:g})")
    return DeliveryConfig(
        mode=s.string("mode", "spool", choices=("spool", "direct")),
        spool_path=s.path("spool_path", str(d.spool_path)),
        max_attempts=s.integer("max_attempts", d.max_attempts, minimum=1),
        max_age_s=max_age_s,
        backoff_initial_s=initial,
        backoff_max_s=maximum,
        dedup_retention_s=s.number("dedup_retention_s", d.dedup_retention_s),
        max_spool_events=s.integer("max_spool_events", d.max_spool_events, minimum=1),
        dead_retention_s=dead_retention_s,
        spool_reserve_bytes=s.integer("spool_reserve_bytes", d.spool_reserve_bytes,
                                      minimum=1 << 20),
        spool_url=_spool_url(s),
    )


def _spool_url(s: Section) -> Secret | None:
    """``spool_url`` / ``spool_url_file``: a PostgreSQL URL, instead of ``spool_path``."""
    url = s.secret("spool_url", required=False)
    if url is None:
        return None
    form = "spool_url_file" if s.has("spool_url_file") else "spool_url"
    if s.has("spool_path"):
        raise ConfigError(f"config key '{s.key(form)}': give either spool_path (SQLite) or "
                          f"{form} (PostgreSQL), not both")
    scheme = url.reveal().split("://", 1)[0] if "://" in url.reveal() else ""
    if scheme not in SCHEMES:
        raise ConfigError(f"config key '{s.key(form)}': must be a postgresql:// or "
                          "postgres:// URL")
    problem = url_problem(url.reveal())
    if problem is not None:
        raise ConfigError(f"config key '{s.key(form)}': {problem}")
    return url


def _limits(s: Section) -> LimitsConfig:
    s.check_unknown({"max_body_bytes", "header_timeout_s", "body_timeout_s",
                     "keepalive_timeout_s", "max_connections", "max_events_per_delivery",
                     "max_inflight_body_bytes"})
    d = LimitsConfig
    max_body_bytes = s.integer("max_body_bytes", d.max_body_bytes, minimum=1)
    inflight = s.integer("max_inflight_body_bytes", d.max_inflight_body_bytes,
                         minimum=max_body_bytes)
    return LimitsConfig(
        max_body_bytes=max_body_bytes,
        header_timeout_s=s.number("header_timeout_s", d.header_timeout_s, minimum=_MIN_TIMER_S),
        body_timeout_s=s.number("body_timeout_s", d.body_timeout_s, minimum=_MIN_TIMER_S),
        keepalive_timeout_s=s.number("keepalive_timeout_s", d.keepalive_timeout_s,
                                     minimum=_MIN_TIMER_S),
        max_connections=s.integer("max_connections", d.max_connections, minimum=1),
        max_events_per_delivery=s.integer("max_events_per_delivery",
                                          d.max_events_per_delivery, minimum=1),
        max_inflight_body_bytes=inflight,
    )


def _host(s: Section, default: str) -> str:
    host = s.string("host", default)
    if not host.strip() or any(c.isspace() for c in host):
        # "" would bind every address: say which one is meant (0.0.0.0 or ::).
        raise ConfigError(f"config key '{s.key('host')}': must be an address or a host name "
                          "(0.0.0.0 or :: for every address)")
    return host


def _admin(s: Section) -> AdminConfig:
    s.check_unknown({"host", "port"})
    return AdminConfig(host=_host(s, AdminConfig.host),
                       port=_port(s, "port", AdminConfig.port))


def _graph(s: Section) -> GraphConfig:
    s.check_unknown({"access_token", "access_token_file", "api_version", "base_url"})
    base_url = s.string("base_url", GraphConfig.base_url).rstrip("/")
    problem = http_url_problem(base_url, secret_in_requests=True)
    if problem is not None:
        raise ConfigError(f"config key '{s.key('base_url')}': {problem}")
    return GraphConfig(
        access_token=s.secret("access_token", required=False),
        api_version=s.string("api_version", GraphConfig.api_version),
        base_url=base_url,
    )


def _logging(s: Section) -> LoggingConfig:
    s.check_unknown({"level", "format"})
    return LoggingConfig(
        level=s.string("level", "info", choices=("debug", "info", "warning", "error")),
        format=s.string("format", "json", choices=("json", "text")),
    )
