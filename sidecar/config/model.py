"""The configuration as frozen values: one dataclass per section of the YAML file.

Defaults live here (the loader reads them off the classes); what each key means is in
docs/configuration.md and config/sidecar.example.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.secret import Secret

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
    dead_retention_s: float = 2_592_000.0  # dead letters and quarantined changes, from receipt
    spool_reserve_bytes: int = 64 * 1024 * 1024  # SQLite: disk kept free for delivery and purge
    # A PostgreSQL spool shared by every replica, instead of spool_path; it holds the
    # database password, hence a Secret (docs/scaling.md).
    spool_url: Secret | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 3 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 1000
    max_events_per_delivery: int = 1000  # past it a delivery is quarantined whole
    max_inflight_body_bytes: int = 256 * 1024 * 1024  # whole instance, split across --workers


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
