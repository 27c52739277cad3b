"""``sidecar certs dev | check | probe``: make dev certificates, audit the configured ones,
and try a real mTLS handshake against a running endpoint.

Thin: parse flags, call ``sidecar.tools.devcerts.write_dev_certs``,
``sidecar.tools.inspect.check_tls`` or ``sidecar.tools.probe.probe``, print the report (text
or ``--json``) and return its exit code.

Exit codes — ``check``: 0 all ok, 1 something expires within ``--warn-days``, 2 something
invalid.  ``probe``: 0 handshake done and client accepted (and, with ``--verify-token``,
the verification GET answered with the challenge), 1 refused or failed, 2 bad usage.
The verify token is never printed: URLs are shown with ``hub.verify_token=***``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sidecar.cli._args import non_negative_int, positive_float
from sidecar.config import load_config
from sidecar.errors import UsageError
from sidecar.logs import printable
from sidecar.secret import Secret
from sidecar.tools.devcerts import write_dev_certs
from sidecar.tools.inspect import EXPIRING, INVALID, OK, CheckItem, CheckReport, check_tls
from sidecar.tools.probe import DEFAULT_TIMEOUT_S, ProbeReport, probe

__all__ = ["register", "run"]

DEFAULT_WARN_DAYS = 30
DEV_FILE_NAMES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


# --------------------------------------------------------------------------- argparse

def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "certs", help="make dev certificates, check the configured ones, probe an endpoint",
        description="Certificate tools: dev, check, probe.")
    commands = parser.add_subparsers(dest="certs_command", metavar="ACTION",
                                     parser_class=type(parser))
    commands.required = True
    _register_dev(commands)
    _register_check(commands)
    _register_probe(commands)
    parser.set_defaults(func=run)


def _register_dev(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev", help="make a local CA, a server cert and a client cert with Meta's CN",
        description="Write ca.pem/ca.key, server.pem/server.key and client.pem/client.key "
                    "(CN client.webhooks.fbclientcerts.com) into DIR.  For trying things "
                    "out only: the CA key is written next to the certificates.")
    dev.add_argument("-o", "--out", required=True, metavar="DIR", type=Path,
                     help="directory to write into (created if missing)")
    dev.add_argument("--force", action="store_true",
                     help="overwrite certificate files already in DIR")


def _register_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check", help="audit every cert, key and CA named under tls: in the config",
        description="Subject, SANs, issuer, validity and days left of every configured "
                    "certificate; key matches cert; chain signatures; CA pins.  Exit 0 ok, "
                    "1 something expires within --warn-days, 2 something invalid.")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="config file")
    check.add_argument("--warn-days", type=non_negative_int, default=DEFAULT_WARN_DAYS,
                       metavar="N", help=f"expiry warning horizon (default {DEFAULT_WARN_DAYS})")
    check.add_argument("--json", action="store_true", help="print one JSON document")


def _register_probe(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe_parser = commands.add_parser(
        "probe", help="real mTLS handshake (+ optional verification GET) against an endpoint",
        description="Connect to URL (https://host[:port]/path), complete a TLS handshake and "
                    "send one HTTP/1.1 GET to learn whether the server accepted the client.  "
                    "Omit --cert/--key to probe as a client WITHOUT a certificate (after "
                    "switching tls.client_auth to required, that probe must be refused).  "
                    "Exit 0 accepted, 1 refused or failed, 2 bad usage.")
    probe_parser.add_argument("url", metavar="URL", help="https://host[:port]/path")
    probe_parser.add_argument("--cert", metavar="C", type=Path,
                              help="client certificate (PEM); omit with --key to probe "
                                   "without a client certificate")
    probe_parser.add_argument("--key", metavar="K", type=Path, help="client private key (PEM)")
    probe_parser.add_argument("--ca", metavar="CA", type=Path,
                              help="CA bundle to trust for the server (default: system store)")
    probe_parser.add_argument("--verify-token", metavar="T",
                              help="send Meta's verification GET with this token and require "
                                   "200 + the challenge (the token is never printed)")
    probe_parser.add_argument("--timeout-s", type=positive_float, default=DEFAULT_TIMEOUT_S,
                              metavar="S", help=f"connect/read timeout (default "
                                                f"{DEFAULT_TIMEOUT_S:g})")
    probe_parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    commands = {"dev": _run_dev, "check": _run_check, "probe": _run_probe}
    return commands[args.certs_command](args)


# --------------------------------------------------------------------------- certs dev

def _run_dev(args: argparse.Namespace) -> int:
    out_dir: Path = args.out
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a directory")
    existing = [name for name in DEV_FILE_NAMES if (out_dir / name).exists()]
    if existing and not args.force:
        raise UsageError(f"-o {out_dir}: already holds {', '.join(existing)} "
                         "(use --force to overwrite)")
    try:
        files = write_dev_certs(out_dir)
    except OSError as exc:
        raise UsageError(f"-o {out_dir}: cannot write ({exc.strerror})") from None
    print(f"CA certificate      {files.ca_cert}")
    print(f"CA key              {files.ca_key}   (dev only: keep it private)")
    print(f"server certificate  {files.server_cert}")
    print(f"server key          {files.server_key}")
    print(f"client certificate  {files.client_cert}   (CN client.webhooks.fbclientcerts.com)")
    print(f"client key          {files.client_key}")
    print(f"hint: {files.ca_cert} is both the server CA for clients (--ca) and the client CA "
          "for tls.client_ca_files")
    return 0


# --------------------------------------------------------------------------- certs check

def _run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    report = check_tls(config, warn_days=args.warn_days)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_check(report)
    return report.exit_code


def _print_check(report: CheckReport) -> None:
    for item in report.items:
        _print_item(item)
    for name in report.client_names:
        tail = f"  warning: {name.warning}" if name.warning else ""
        _say(f"{'client_name':<12} {'INFO':<9} {name.name}{tail}")
    counts = report.counts
    _say(f"summary: {report.status.upper()} — {len(report.items)} items: {counts[OK]} ok, "
          f"{counts[EXPIRING]} expiring, {counts[INVALID]} invalid (warn-days "
          f"{report.warn_days})")


def _print_item(item: CheckItem) -> None:
    where = item.file
    if "position" in item.extra:
        where += f" [{item.extra['position']}]"
    _say(f"{item.kind:<12} {item.status.upper():<9} {where}")
    facts = item.facts
    if facts is not None:
        ca = "  (CA)" if facts.is_ca else ""
        _say(f"    subject    {facts.subject}{ca}")
        if facts.sans:
            _say(f"    sans       {', '.join(facts.sans)}")
        _say(f"    issuer     {facts.issuer}")
        _say(f"    serial     {facts.serial}")
        _say(f"    valid      {facts.not_before:%Y-%m-%d %H:%M}Z → "
              f"{facts.not_after:%Y-%m-%d %H:%M}Z ({item.days_left:.1f} days left)")
        _say(f"    sha256     {facts.sha256}")
    if item.extra.get("pinned") is not None:
        _say(f"    pinned     {'yes' if item.extra['pinned'] else 'NO'}")
    for note in item.notes:
        _say(f"    note       {note}")
    for warning in item.warnings:
        _say(f"    warning    {warning}")
    for problem in item.problems:
        _say(f"    problem    {problem}")


# --------------------------------------------------------------------------- certs probe

def _run_probe(args: argparse.Namespace) -> int:
    token = Secret(args.verify_token) if args.verify_token is not None else None
    report = probe(args.url, cert=args.cert, key=args.key, ca=args.ca, verify_token=token,
                   timeout_s=args.timeout_s)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_probe(report)
    return 0 if report.ok else 1


def _print_probe(report: ProbeReport) -> None:
    rows: list[tuple[str, Any]] = [
        ("url", report.url),
        ("client cert", report.client_cert or "none (probing without a client certificate)"),
        ("protocol", report.protocol), ("cipher", report.cipher),
    ]
    for index, cert in enumerate(report.server_chain):
        rows += [(f"server [{index}]", cert["subject"]), ("  sans", ", ".join(cert["sans"])),
                 ("  issuer", cert["issuer"]),
                 ("  not after", f"{cert['not_after']} ({cert['days_left']:.1f} days left)")]
    if report.accepted is not None:
        rows.append(("accepted", "yes" if report.accepted else "no"))
    if report.http_status is not None:
        rows.append(("http status", report.http_status))
    if report.verification_ok is not None:
        rows.append(("verification", "ok" if report.verification_ok else "FAILED"))
    for label, value in rows:
        if value not in (None, ""):
            _say(f"{label:<13} {value}")
    word = "OK" if report.ok else ("REFUSED" if report.accepted is False else "FAILED")
    _say(f"result: {word} — {report.reason}")
    sys.stdout.flush()


def _say(line: str) -> None:
    # Subjects, SANs and reasons come from certificates made elsewhere (a downloaded CA
    # bundle, a remote server's chain): shown escaped where they do not print.
    print(printable(line))
