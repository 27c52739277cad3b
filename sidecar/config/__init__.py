"""The one YAML config file, as frozen dataclasses.

Every problem is a ``ConfigError`` whose message names the key at fault (and the
environment variable or file, where one is involved), so ``config check`` and
``serve`` print one line and exit non-zero.  Strings may contain ``${ENV_VAR}``.
Each secret key has a ``*_file`` form (Docker/Kubernetes secrets); giving both forms
is an error.  Relative paths are relative to the config file's folder.

    model.py   the values and their defaults
    reader.py  typed reading of one mapping, each error naming its key
    loader.py  the file → Config, section by section
"""

from sidecar.config.loader import load_config, parse_config
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
