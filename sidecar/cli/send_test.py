"""``sidecar send-test -c FILE``: one signed sample delivery over mTLS, like Meta's test button."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from sidecar.config import load_config
from sidecar.errors import UsageError
from sidecar.tools.samples import SAMPLE_FIELDS, sample_delivery
from sidecar.tools.sender import default_client_tls, listener_url, send_delivery

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "send-test", help="send a signed sample delivery to the running sidecar",
        description="Send a correctly signed sample delivery over mTLS to the configured "
                    "listener. The client pair defaults to client.pem/client.key and ca.pem "
                    "next to tls.cert_file (where `sidecar certs dev` writes them).")
    p.add_argument("-c", "--config", required=True, type=Path, help="config YAML file")
    p.add_argument("--field", default="messages", choices=SAMPLE_FIELDS,
                   help="which field's sample to send (default: messages)")
    p.add_argument("--cert", type=Path, help="client certificate (PEM)")
    p.add_argument("--key", type=Path, help="client key (PEM)")
    p.add_argument("--ca", type=Path, help="CA that signed the server certificate")
    p.add_argument("--url", help="override the target URL (default: from listen.*)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        # One of them alone would be paired with the other of `certs dev`'s pair.
        raise UsageError("--cert and --key go together (omit both to use the pair "
                         "`sidecar certs dev` wrote)")
    config = load_config(args.config)
    tls = default_client_tls(config, args.cert, args.key, args.ca)
    url = args.url or listener_url(config)
    # A fresh token per send: the sidecar drops repeats of an event it already stored.
    payload = sample_delivery(args.field, unique=uuid.uuid4().hex[:12])
    result = send_delivery(url, payload, secret=config.meta.app_secrets[0], tls=tls)
    print(f"POST {url} field={args.field} -> {result.status} {result.body}")
    return 0 if result.status == 200 else 1
