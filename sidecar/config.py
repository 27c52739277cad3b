"""Load the one YAML config file into frozen dataclasses.

Every problem is a ``ConfigError`` whose message names the key at fault (and the
environment variable or file, where one is involved), so ``config check`` and
``serve`` print one line and exit non-zero.  Strings may contain ``${ENV_VAR}``.
Each secret key has a ``*_file`` form (Docker/Kubernetes secrets); giving both forms
is an error.  Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from sidecar.errors import ConfigError
from sidecar.secret import Secret, standard_webhooks_key

__all__ = [
    "Config",
    "ListenConfig",
    "TLSConfig",
    "MetaConfig",
    "UpstreamConfig",
    "DeliveryConfig",
    "LimitsConfig",
    "AdminConfig",
    "GraphConfig",
    "LoggingConfig",
    "load_config",
    "parse_config",
    "META_CLIENT_NAME",
]

META_CLIENT_NAME = "client.webhooks.fbclientcerts.com"


# Not slots=True: the loader reads defaults off the classes (ListenConfig.port, ...).
@dataclass(frozen=True)
class ListenConfig:
    host: str = "0.0.0.0"
    port: int = 8443
    path: str = "/webhooks/whatsapp"


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_ca_files: tuple[Path, ...]
    allowed_client_names: tuple[str, ...] = (META_CLIENT_NAME,)
    client_auth: str = "required"  # required | optional
    reload_interval_s: float = 30.0
    client_ca_sha256: tuple[str, ...] = ()  # pinned CA fingerprints (hex, colons allowed)


@dataclass(frozen=True)
class MetaConfig:
    app_secrets: tuple[Secret, ...]
    verify_token: Secret
    unknown_fields: str = "forward"  # forward | drop


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    timeout_s: float = 5.0
    signing_secret: Secret | None = None
    batch_max: int = 1
    max_in_flight: int = 32
    ca_file: Path | None = None  # https upstream: trust only these CAs (default: system roots)


@dataclass(frozen=True)
class DeliveryConfig:
    mode: str = "spool"  # spool | direct
    spool_path: Path = Path("var/spool.db")
    max_attempts: int = 20
    max_age_s: float = 604800.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    dedup_retention_s: float = 604800.0
    max_spool_events: int = 1_000_000


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 3 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 1000


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9090


@dataclass(frozen=True)
class GraphConfig:
    access_token: Secret | None = None
    api_version: str = "v24.0"
    base_url: str = "https://graph.facebook.com"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"  # json | text


@dataclass(frozen=True)
class Config:
    path: Path
    listen: ListenConfig
    tls: TLSConfig
    meta: MetaConfig
    upstream: UpstreamConfig
    delivery: DeliveryConfig
    limits: LimitsConfig
    admin: AdminConfig
    graph: GraphConfig
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------- loading

_MAX_NUMBER = 2**53  # no setting needs more; keeps every value a safe int/float
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
T = TypeVar("T")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the config file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path}: not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: unreadable ({type(exc).__name__})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from exc
    return parse_config(raw, base_dir=path.resolve().parent, env=os.environ if env is None else env,
                        path=path)


class _Section:
    """Reads one mapping, tracking which keys were used so unknown keys are errors."""

    def __init__(self, raw: Any, name: str, reader: _Reader) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config key '{name}': must be a mapping")
        self.raw = raw
        self.name = name
        self.reader = reader

    def key(self, k: str) -> str:
        return f"{self.name}.{k}" if self.name else k

    def has(self, k: str) -> bool:
        return k in self.raw and self.raw[k] is not None

    def check_unknown(self, known: set[str]) -> None:
        for k in self.raw:
            if k not in known:
                raise ConfigError(f"config key '{self.key(str(k))}': unknown key")

    def string(self, k: str, default: str | None = None, *, required: bool = False,
               choices: tuple[str, ...] | None = None) -> str:
        if not self.has(k):
            if required or default is None:
                raise ConfigError(f"config key '{self.key(k)}': required")
            return default
        value = self.reader.string(self.raw[k], self.key(k))
        if choices is not None and value not in choices:
            raise ConfigError(f"config key '{self.key(k)}': must be one of {', '.join(choices)}")
        return value

    def _scalar(self, k: str, parse: type[int] | type[float], what: str) -> int | float:
        """A YAML number, or a string (e.g. from ``${ENV}``) that parses as one."""
        value = self.raw[k]
        if isinstance(value, str):
            try:
                value = parse(self.reader.string(value, self.key(k)))
            except ValueError:
                raise ConfigError(f"config key '{self.key(k)}': must be {what}") from None
        allowed = (int,) if parse is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"config key '{self.key(k)}': must be {what}")
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > _MAX_NUMBER:
            raise ConfigError(f"config key '{self.key(k)}': must be {what} below {_MAX_NUMBER}")
        return value

    def integer(self, k: str, default: int, *, minimum: int = 0) -> int:
        if not self.has(k):
            return default
        value = int(self._scalar(k, int, "an integer"))
        if value < minimum:
            raise ConfigError(f"config key '{self.key(k)}': must be >= {minimum}")
        return value

    def number(self, k: str, default: float, *, minimum: float = 0.0,
               exclusive: bool = False) -> float:
        if not self.has(k):
            return default
        value = float(self._scalar(k, float, "a number"))
        if value < minimum or (exclusive and value == minimum):
            op = ">" if exclusive else ">="
            raise ConfigError(f"config key '{self.key(k)}': must be {op} {minimum}")
        return float(value)

    def string_list(self, k: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if not self.has(k):
            if default is None:
                raise ConfigError(f"config key '{self.key(k)}': required")
            return default
        value = self.raw[k]
        # A lone string is refused too (a wrong type, SPEC 6), not read as a list of one:
        # e.g. `app_secrets: "a, b"` would otherwise become one secret with a comma in it.
        if not isinstance(value, list):
            raise ConfigError(f"config key '{self.key(k)}': must be a list of strings "
                              "(write [\"...\"] even for one)")
        return tuple(self.reader.string(v, f"{self.key(k)}[{i}]") for i, v in enumerate(value))

    def path(self, k: str, default: str | None = None) -> Path:
        return self.reader.resolve(self.string(k, default))

    def path_list(self, k: str) -> tuple[Path, ...]:
        return tuple(self.reader.resolve(p) for p in self.string_list(k))

    def secret(self, k: str, *, required: bool) -> Secret | None:
        """``k`` or ``k_file`` (a path to a file holding the secret), never both."""
        file_key = f"{k}_file"
        if self.has(k) and self.has(file_key):
            raise ConfigError(f"config key '{self.key(k)}': give either {k} or {file_key}, not both")
        if self.has(file_key):
            return Secret(self.reader.read_secret_file(self.path(file_key), self.key(file_key)))
        if self.has(k):
            value = self.string(k)
            if not value:
                raise ConfigError(f"config key '{self.key(k)}': must not be empty")
            return Secret(value)
        if required:
            raise ConfigError(f"config key '{self.key(k)}': required (or {file_key})")
        return None

    def secret_list(self, k: str, file_key: str) -> tuple[Secret, ...]:
        if self.has(k) and self.has(file_key):
            raise ConfigError(f"config key '{self.key(k)}': give either {k} or {file_key}, not both")
        if self.has(file_key):
            paths = self.path_list(file_key)
            values = [self.reader.read_secret_file(p, f"{self.key(file_key)}[{i}]")
                      for i, p in enumerate(paths)]
        else:
            values = list(self.string_list(k))
            for i, v in enumerate(values):
                if not v:
                    raise ConfigError(f"config key '{self.key(k)}[{i}]': must not be empty")
        if not values:
            raise ConfigError(f"config key '{self.key(k)}': at least one app secret is required")
        return tuple(Secret(v) for v in values)

    def section(self, k: str) -> _Section:
        return _Section(self.raw.get(k), self.key(k), self.reader)


class _Reader:
    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.env = env

    def string(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}': must be a string")
        text = str(value)

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                raise ConfigError(f"config key '{key}': environment variable {name} is not set")
            return self.env[name]

        return _ENV_REF.sub(substitute, text)

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def read_secret_file(self, path: Path, key: str) -> str:
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config key '{key}': cannot read file {path} "
                              f"({type(exc).__name__})") from exc
        value = value.rstrip("\r\n")
        if not value:
            raise ConfigError(f"config key '{key}': file {path} is empty")
        return value


def parse_config(raw: Any, *, base_dir: Path, env: Mapping[str, str],
                 path: Path | None = None) -> Config:
    reader = _Reader(base_dir, env)
    root = _Section(raw, "", reader)
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


def _listen(s: _Section) -> ListenConfig:
    s.check_unknown({"host", "port", "path"})
    path = s.string("path", ListenConfig.path)
    if not path.startswith("/"):
        raise ConfigError(f"config key '{s.key('path')}': must start with /")
    return ListenConfig(host=s.string("host", ListenConfig.host),
                        port=_port(s, "port", ListenConfig.port), path=path)


def _port(s: _Section, k: str, default: int) -> int:
    port = s.integer(k, default)
    if port > 65535:
        raise ConfigError(f"config key '{s.key(k)}': must be a TCP port (0-65535)")
    return port


def _tls(s: _Section) -> TLSConfig:
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
                                   minimum=0.0, exclusive=True),
        client_ca_sha256=pins,
    )


def _meta(s: _Section) -> MetaConfig:
    s.check_unknown({"app_secrets", "app_secrets_files", "verify_token", "verify_token_file",
                     "unknown_fields"})
    token = s.secret("verify_token", required=True)
    assert token is not None
    return MetaConfig(
        app_secrets=s.secret_list("app_secrets", "app_secrets_files"),
        verify_token=token,
        unknown_fields=s.string("unknown_fields", "forward", choices=("forward", "drop")),
    )


def _upstream(s: _Section) -> UpstreamConfig:
    s.check_unknown({"url", "timeout_s", "signing_secret", "signing_secret_file", "batch_max",
                     "max_in_flight", "ca_file"})
    url = s.string("url", required=True)
    if not _is_http_url(url):
        raise ConfigError(f"config key '{s.key('url')}': must be an http:// or https:// URL "
                          "with a host (and a port from 1 to 65535, if given)")
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
                              "after the prefix (Standard Webhooks)") from None
    return UpstreamConfig(
        url=url,
        timeout_s=s.number("timeout_s", UpstreamConfig.timeout_s, exclusive=True),
        signing_secret=signing_secret,
        batch_max=s.integer("batch_max", UpstreamConfig.batch_max, minimum=1),
        max_in_flight=s.integer("max_in_flight", UpstreamConfig.max_in_flight, minimum=1),
        ca_file=ca_file,
    )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when not a number or out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0 \
        and not any(c.isspace() for c in url)


def _delivery(s: _Section) -> DeliveryConfig:
    s.check_unknown({"mode", "spool_path", "max_attempts", "max_age_s", "backoff_initial_s",
                     "backoff_max_s", "dedup_retention_s", "max_spool_events"})
    d = DeliveryConfig
    initial = s.number("backoff_initial_s", d.backoff_initial_s, exclusive=True)
    maximum = s.number("backoff_max_s", d.backoff_max_s, exclusive=True)
    if maximum < initial:
        raise ConfigError(f"config key '{s.key('backoff_max_s')}': must be >= backoff_initial_s")
    return DeliveryConfig(
        mode=s.string("mode", "spool", choices=("spool", "direct")),
        spool_path=s.path("spool_path", str(d.spool_path)),
        max_attempts=s.integer("max_attempts", d.max_attempts, minimum=1),
        max_age_s=s.number("max_age_s", d.max_age_s, exclusive=True),
        backoff_initial_s=initial,
        backoff_max_s=maximum,
        dedup_retention_s=s.number("dedup_retention_s", d.dedup_retention_s),
        max_spool_events=s.integer("max_spool_events", d.max_spool_events, minimum=1),
    )


def _limits(s: _Section) -> LimitsConfig:
    s.check_unknown({"max_body_bytes", "header_timeout_s", "body_timeout_s",
                     "keepalive_timeout_s", "max_connections"})
    d = LimitsConfig
    return LimitsConfig(
        max_body_bytes=s.integer("max_body_bytes", d.max_body_bytes, minimum=1),
        header_timeout_s=s.number("header_timeout_s", d.header_timeout_s, exclusive=True),
        body_timeout_s=s.number("body_timeout_s", d.body_timeout_s, exclusive=True),
        keepalive_timeout_s=s.number("keepalive_timeout_s", d.keepalive_timeout_s, exclusive=True),
        max_connections=s.integer("max_connections", d.max_connections, minimum=1),
    )


def _admin(s: _Section) -> AdminConfig:
    s.check_unknown({"host", "port"})
    return AdminConfig(host=s.string("host", AdminConfig.host),
                       port=_port(s, "port", AdminConfig.port))


def _graph(s: _Section) -> GraphConfig:
    s.check_unknown({"access_token", "access_token_file", "api_version", "base_url"})
    return GraphConfig(
        access_token=s.secret("access_token", required=False),
        api_version=s.string("api_version", GraphConfig.api_version),
        base_url=s.string("base_url", GraphConfig.base_url).rstrip("/"),
    )


def _logging(s: _Section) -> LoggingConfig:
    s.check_unknown({"level", "format"})
    return LoggingConfig(
        level=s.string("level", "info", choices=("debug", "info", "warning", "error")),
        format=s.string("format", "json", choices=("json", "text")),
    )
