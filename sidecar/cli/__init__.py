"""``sidecar`` command line: argparse, dispatch, and the one SidecarError → exit code catch.

Each command lives in its own module exposing ``register(subparsers)``; the parser it
adds sets ``func`` to a ``run(args) -> int``.  Commands parse, call the library, print
and return an exit code; errors raised as ``SidecarError`` become one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sidecar import __version__
from sidecar.logs import printable
from sidecar.errors import SidecarError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; we keep exit 2 but print one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {printable(message)}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from sidecar.cli import certs, config_cmd, demo, send_test, serve, spool_cmd, subscriptions

    parser = _Parser(prog="sidecar", description="WhatsApp webhook ingress sidecar")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (serve, config_cmd, certs, send_test, spool_cmd, subscriptions, demo):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Library warnings of a one-shot command (a spool outage, say) would reach stderr
    # through logging's last-resort handler, beside the command's own one-line error;
    # ``serve`` installs its real handlers on the root logger, which this does not touch.
    logging.getLogger("sidecar").addHandler(logging.NullHandler())
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except SidecarError as exc:
        sys.stderr.write(f"sidecar: error: {printable(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get("SIDECAR_DEBUG"):
            raise
        # The traceback goes to the log, where ``serve`` has its handlers (a crash of the
        # daemon must leave something to diagnose); a one-shot command's stderr gets the
        # kind of failure only, never a traceback that might quote a secret.
        logging.getLogger("sidecar").error("cli.unexpected_error", exc_info=True)
        sys.stderr.write(f"sidecar: error: unexpected {type(exc).__name__} (a bug; run "
                         "with SIDECAR_DEBUG=1 to see where)\n")
        return 1
