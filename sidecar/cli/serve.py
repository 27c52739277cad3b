"""``sidecar serve -c FILE``: run the proxy and the delivery worker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sidecar.cli._args import bounded_int
from sidecar.config import load_config
from sidecar.logs import setup_logging
from sidecar.server import default_workers, run_server

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the webhook listener and the delivery worker",
                       description="Run the public mTLS listener, the admin listener and the "
                                   "delivery worker until SIGTERM. SIGHUP reloads certificates "
                                   "and secrets.")
    p.add_argument("-c", "--config", required=True, type=Path, help="config YAML file")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--workers", type=_workers, default="auto", metavar="N|auto",
                   help="ingest processes on the public port (default auto: one per usable "
                        "CPU, cgroup quota included); with N > 1 the parent process runs "
                        "the admin listener and the delivery worker")
    p.set_defaults(func=run)


MAX_WORKERS = 256  # more ingest processes than any host has cores is a typo


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else bounded_int(1, MAX_WORKERS)(text)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format)
    try:
        workers = default_workers() if args.workers == "auto" else args.workers
        return run_server(args.config, loop=args.loop, workers=workers)
    except OSError as exc:
        # e.g. the port is taken: one line, no traceback.
        sys.stderr.write(f"sidecar: error: cannot listen: {exc.strerror or exc}\n")
        return 1
