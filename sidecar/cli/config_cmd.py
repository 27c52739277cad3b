"""``sidecar config check -c FILE``: validate the config and every file it names."""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Any

from sidecar.config import load_config
from sidecar.errors import ConfigError
from sidecar.server.fds import check_fd_budget, nofile_hard_limit
from sidecar.config.spool_url import redact_url
from sidecar.tls.material import build_context, load_material
from sidecar.tls.upstream_trust import UpstreamTrust

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration commands")
    config_sub = p.add_subparsers(dest="config_command", metavar="COMMAND",
                                  parser_class=type(p))
    config_sub.required = True
    check = config_sub.add_parser(
        "check", help="validate the config and the files it references",
        description="Exit 0 when the config and its certificate, key, CA and secret files "
                    "are valid; otherwise print one line naming the key at fault and exit 2.")
    check.add_argument("-c", "--config", required=True, type=Path, help="config YAML file")
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    material = load_material(config.tls)
    # And what OpenSSL makes of those bytes, as serve does at start.
    build_context(material, require_client_cert=config.tls.client_auth == "required")
    if config.upstream.ca_file is not None:
        UpstreamTrust(config.upstream.ca_file)  # raises, naming upstream.ca_file
    check_fd_budget(config, limit=nofile_hard_limit())  # what serve raises the limit to
    spool_url = config.delivery.spool_url
    spool_dir = config.delivery.spool_path.parent
    if spool_url is None and spool_dir.exists() and not spool_dir.is_dir():
        raise ConfigError(f"config key 'delivery.spool_path': {spool_dir} is not a directory")
    if spool_url is None and config.delivery.spool_path.is_dir():
        raise ConfigError(f"config key 'delivery.spool_path': {config.delivery.spool_path} "
                          "is a directory, not a file")
    leaf = material.server_chain[0]
    print(f"config OK: {args.config}")
    print(f"  listen   https://{config.listen.host}:{config.listen.port}{config.listen.path}"
          f" (client_auth {config.tls.client_auth})")
    print(f"  server   {leaf.subject} (expires {leaf.not_after:%Y-%m-%d})")
    print(f"  clients  {', '.join(config.tls.allowed_client_names)} from "
          f"{len(material.client_cas)} CA certificate(s)")
    print(f"  secrets  {len(config.meta.app_secrets)} app secret(s), verify token set")
    print(f"  delivery {config.delivery.mode} -> {_without_query(config.upstream.url)}"
          + (f" (trusting {config.upstream.ca_file})" if config.upstream.ca_file else ""))
    print(f"  spool    {redact_url(spool_url.reveal())} (PostgreSQL, shared)" if spool_url
          else f"  spool    {config.delivery.spool_path} (SQLite)")
    if config.tls.client_auth == "optional":
        print("  WARNING  tls.client_auth is optional: clients without a certificate are "
              "admitted (onboarding only)")
    return 0


def _without_query(url: str) -> str:
    """The upstream URL as printed: a query string may carry a token, so only its
    presence is shown (credentials before the host are refused by the loader)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="…" if parts.query else "", fragment=""))
