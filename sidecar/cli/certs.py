"""``sidecar certs dev | check | probe``: make dev certificates, audit the configured ones,
and try a real mTLS handshake against a running endpoint.

Thin over ``sidecar.tls``: ``check`` reads the files named under ``tls:`` with the same
readers the server uses and reports every problem it finds (it does not stop at the
first one, unlike ``load_material``); ``probe`` uses stdlib ``ssl`` + ``socket`` only.

Exit codes — ``check``: 0 all ok, 1 something expires within ``--warn-days``, 2 something
invalid.  ``probe``: 0 handshake done and client accepted (and, with ``--verify-token``,
the verification GET answered with the challenge), 1 refused or failed, 2 bad usage.
The verify token is never printed: URLs are shown with ``hub.verify_token=***``.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sidecar.config import Config, load_config
from sidecar.errors import TLSMaterialError, UsageError
from sidecar.logs import redact_query
from sidecar.tls.devcerts import write_dev_certs
from sidecar.tls.material import (
    CertFacts,
    cert_facts,
    key_matches,
    read_pem_certs,
    read_private_key,
)

__all__ = ["register", "run", "check_tls", "probe", "CheckItem", "CheckReport", "ProbeReport"]

DEFAULT_WARN_DAYS = 30
DEFAULT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024
META_CA_PREFIX = "meta-outbound-api-ca"
META_CA_HINT = ("download it from Meta's mTLS for webhooks documentation; "
                "see certs/README.md")
DEV_FILE_NAMES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")

OK, EXPIRING, INVALID = "ok", "expiring", "invalid"
_SEVERITY = {OK: 0, EXPIRING: 1, INVALID: 2}
_EXIT_CODES = {OK: 0, EXPIRING: 1, INVALID: 2}
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


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
    check.add_argument("--warn-days", type=_non_negative_int, default=DEFAULT_WARN_DAYS,
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
    probe_parser.add_argument("--timeout-s", type=_positive_float, default=DEFAULT_TIMEOUT_S,
                              metavar="S", help=f"connect/read timeout (default "
                                                f"{DEFAULT_TIMEOUT_S:g})")
    probe_parser.add_argument("--json", action="store_true", help="print one JSON document")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


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

@dataclass(slots=True)
class CheckItem:
    """One certificate or key file that ``certs check`` looked at."""

    kind: str  # server_cert | server_key | client_ca
    file: str
    facts: CertFacts | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    days_left: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.problems:
            return INVALID
        return EXPIRING if self.warnings else OK

    def to_json(self) -> dict[str, object]:
        facts = self.facts
        out: dict[str, object] = {"kind": self.kind, "file": self.file, "status": self.status,
                                  "problems": list(self.problems),
                                  "warnings": list(self.warnings), "notes": list(self.notes)}
        out.update({
            "subject": facts.subject if facts else None,
            "sans": list(facts.sans) if facts else [],
            "issuer": facts.issuer if facts else None,
            "serial": facts.serial if facts else None,
            "not_before": facts.not_before.isoformat() if facts else None,
            "not_after": facts.not_after.isoformat() if facts else None,
            "days_left": self.days_left,
            "sha256": facts.sha256 if facts else None,
            "is_ca": facts.is_ca if facts else None,
        })
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class NameCheck:
    name: str
    warning: str | None


@dataclass(frozen=True, slots=True)
class CheckReport:
    warn_days: int
    items: tuple[CheckItem, ...]
    client_names: tuple[NameCheck, ...]

    @property
    def status(self) -> str:
        return max((item.status for item in self.items), key=_SEVERITY.__getitem__, default=OK)

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self.status]

    def to_json(self) -> dict[str, object]:
        return {"ok": self.status == OK, "status": self.status, "warn_days": self.warn_days,
                "items": [item.to_json() for item in self.items],
                "allowed_client_names": [{"name": n.name, "warning": n.warning}
                                         for n in self.client_names]}


def _run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    report = check_tls(config, warn_days=args.warn_days)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_check(report)
    return report.exit_code


def check_tls(config: Config, *, warn_days: int, now: datetime | None = None) -> CheckReport:
    """Look at every file named under ``tls:`` and collect every problem found."""
    now = now or datetime.now(timezone.utc)
    tls = config.tls
    server_items, chain = _check_server_chain(tls.cert_file, now, warn_days)
    key_item = _check_server_key(tls.key_file, chain[0] if chain else None, tls.cert_file)
    ca_items: list[CheckItem] = []
    for path in tls.client_ca_files:
        ca_items += _check_client_ca_file(path, tls.client_ca_sha256, now, warn_days)
    names = tuple(_check_client_name(name) for name in tls.allowed_client_names)
    return CheckReport(warn_days, (*server_items, key_item, *ca_items), names)


def _check_server_chain(path: Path, now: datetime, warn_days: int
                        ) -> tuple[list[CheckItem], list[x509.Certificate]]:
    try:
        _, chain = read_pem_certs(path, "tls.cert_file")
    except TLSMaterialError as exc:
        return [CheckItem("server_cert", str(path), problems=[_missing_hint(path, str(exc))])], []
    items = []
    for index, cert in enumerate(chain):
        item = _cert_item("server_cert", cert, path, now, warn_days)
        item.extra["position"] = index
        if index + 1 < len(chain):
            _check_signature(item, cert, chain[index + 1])
        items.append(item)
    items[0].notes.append(_chain_note(chain))
    items[0].extra["chain"] = _chain_note(chain)
    if items[0].facts is not None and items[0].facts.is_ca:
        items[0].notes.append("the first certificate (the leaf) is a CA certificate")
    return items, chain


def _check_server_key(path: Path, leaf: x509.Certificate | None, cert_path: Path) -> CheckItem:
    item = CheckItem("server_key", str(path))
    try:
        _, key = read_private_key(path)
    except TLSMaterialError as exc:
        item.problems.append(str(exc))
        return item
    if leaf is None:
        item.notes.append("readable; not matched (the server certificate is unusable)")
        item.extra["matches_leaf"] = None
    elif key_matches(key, leaf):
        item.notes.append("readable; matches the leaf certificate")
        item.extra["matches_leaf"] = True
    else:
        item.problems.append(f"tls.key_file {path}: does not match the certificate in "
                             f"{cert_path}")
        item.extra["matches_leaf"] = False
    return item


def _check_client_ca_file(path: Path, pins: Sequence[str], now: datetime,
                          warn_days: int) -> list[CheckItem]:
    try:
        _, certs = read_pem_certs(path, "tls.client_ca_files")
    except TLSMaterialError as exc:
        return [CheckItem("client_ca", str(path), problems=[_missing_hint(path, str(exc))])]
    items = []
    for cert in certs:
        item = _cert_item("client_ca", cert, path, now, warn_days)
        facts = item.facts
        assert facts is not None
        if not facts.is_ca:
            item.problems.append(f"tls.client_ca_files {path}: '{facts.subject}' is not a CA "
                                 "certificate")
        item.extra["pinned"] = (facts.sha256 in pins) if pins else None
        if pins and facts.sha256 not in pins:
            item.problems.append(f"tls.client_ca_files {path}: sha256 {facts.sha256} is not "
                                 "listed in tls.client_ca_sha256")
        items.append(item)
    return items


def _cert_item(kind: str, cert: x509.Certificate, path: Path, now: datetime,
               warn_days: int) -> CheckItem:
    facts = cert_facts(cert, path)
    days_left = facts.seconds_left(now) / 86400
    item = CheckItem(kind, str(path), facts=facts, days_left=round(days_left, 2))
    if facts.not_after <= now:
        item.problems.append(f"expired on {facts.not_after:%Y-%m-%d %H:%M}Z")
    elif facts.not_before > now:
        item.problems.append(f"not valid before {facts.not_before:%Y-%m-%d %H:%M}Z")
    elif days_left < warn_days:
        item.warnings.append(f"expires in {days_left:.1f} days (within --warn-days {warn_days})")
    return item


def _check_signature(item: CheckItem, cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except ValueError as exc:
        item.problems.append(f"chain: not issued by the next certificate in the file ({exc})")
    except InvalidSignature:
        item.problems.append("chain: signature does not verify against the next certificate")
    except TypeError as exc:
        item.problems.append(f"chain: cannot verify the signature ({exc})")


def _chain_note(chain: list[x509.Certificate]) -> str:
    if len(chain) == 1:
        return "chain: leaf only"
    last = chain[-1]
    anchor = "ends at a self-signed root" if last.issuer == last.subject else \
        f"ends at '{last.subject.rfc4514_string()}'"
    return f"chain: {len(chain)} certificates, {anchor}"


def _missing_hint(path: Path, message: str) -> str:
    if path.name.startswith(META_CA_PREFIX) and "file not found" in message:
        return f"{message}: {META_CA_HINT}"
    return message


def _check_client_name(name: str) -> NameCheck:
    if "*" in name:
        return NameCheck(name, "contains a wildcard: names are matched exactly, so it can "
                               "only match a certificate carrying that literal text")
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        return NameCheck(name, "not a plausible DNS name: it can only match a CN with "
                               "exactly that text")
    return NameCheck(name, None)


def _print_check(report: CheckReport) -> None:
    for item in report.items:
        _print_item(item)
    for name in report.client_names:
        tail = f"  warning: {name.warning}" if name.warning else ""
        print(f"{'client_name':<12} {'INFO':<9} {name.name}{tail}")
    counts = {s: sum(1 for i in report.items if i.status == s) for s in (OK, EXPIRING, INVALID)}
    print(f"summary: {report.status.upper()} — {len(report.items)} items: {counts[OK]} ok, "
          f"{counts[EXPIRING]} expiring, {counts[INVALID]} invalid (warn-days "
          f"{report.warn_days})")


def _print_item(item: CheckItem) -> None:
    where = item.file
    if "position" in item.extra:
        where += f" [{item.extra['position']}]"
    print(f"{item.kind:<12} {item.status.upper():<9} {where}")
    facts = item.facts
    if facts is not None:
        ca = "  (CA)" if facts.is_ca else ""
        print(f"    subject    {facts.subject}{ca}")
        if facts.sans:
            print(f"    sans       {', '.join(facts.sans)}")
        print(f"    issuer     {facts.issuer}")
        print(f"    serial     {facts.serial}")
        print(f"    valid      {facts.not_before:%Y-%m-%d %H:%M}Z → "
              f"{facts.not_after:%Y-%m-%d %H:%M}Z ({item.days_left:.1f} days left)")
        print(f"    sha256     {facts.sha256}")
    if item.extra.get("pinned") is not None:
        print(f"    pinned     {'yes' if item.extra['pinned'] else 'NO'}")
    for note in item.notes:
        print(f"    note       {note}")
    for warning in item.warnings:
        print(f"    warning    {warning}")
    for problem in item.problems:
        print(f"    problem    {problem}")


# --------------------------------------------------------------------------- certs probe

@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str  # path + query as sent (may hold the token: never print it)

    @property
    def shown_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return redact_query(f"https://{host}:{self.port}{self.path}")


@dataclass(slots=True)
class ProbeReport:
    url: str  # redacted
    client_cert: str | None  # subject of the certificate presented, if any
    connected: bool = False
    protocol: str | None = None
    cipher: str | None = None
    server_chain: list[dict[str, Any]] = field(default_factory=list)
    accepted: bool | None = None
    http_status: int | None = None
    verification_ok: bool | None = None
    ok: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "url": self.url, "reason": self.reason,
                "connected": self.connected, "protocol": self.protocol, "cipher": self.cipher,
                "server_chain": self.server_chain, "client_cert": self.client_cert,
                "accepted": self.accepted, "http_status": self.http_status,
                "verification_ok": self.verification_ok}


@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    status: int
    body: bytes


class _Refused(Exception):
    """The server ended the connection instead of answering the request."""


def _run_probe(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together (omit both to probe without a client "
                         "certificate)")
    token: str | None = args.verify_token
    challenge = str(secrets.randbelow(9 * 10**9) + 10**9)
    target = _parse_target(args.url, token, challenge)
    context = _client_context(args.cert, args.key, args.ca)
    client_subject = _client_subject(args.cert) if args.cert is not None else None
    report = probe(target, context, client_subject, token is not None, challenge,
                   args.timeout_s)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_probe(report)
    return 0 if report.ok else 1


def _parse_target(url: str, token: str | None, challenge: str) -> Target:
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise UsageError("URL: not a valid https://host[:port]/path URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise UsageError(f"URL {redact_query(url)}: must be https://host[:port]/path")
    path = parts.path or "/"
    query = parts.query
    if token is not None:
        extra = urlencode({"hub.mode": "subscribe", "hub.verify_token": token,
                           "hub.challenge": challenge})
        query = f"{query}&{extra}" if query else extra
    return Target(parts.hostname, port, f"{path}?{query}" if query else path)


def _client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSMaterialError(f"--ca {ca}: cannot load the CA bundle "
                               f"({_reason_of(exc)})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise TLSMaterialError(f"--cert {cert} / --key {key}: cannot load the client "
                                   f"pair ({_reason_of(exc)})") from None
    return context


def _client_subject(cert: Path) -> str:
    _, certs = read_pem_certs(cert, "--cert")
    return certs[0].subject.rfc4514_string()


def probe(target: Target, context: ssl.SSLContext, client_subject: str | None,
          with_token: bool, challenge: str, timeout_s: float) -> ProbeReport:
    """Connect, handshake, send one GET; never raises for what the network does."""
    report = ProbeReport(target.shown_url, client_subject)
    try:
        raw = socket.create_connection((target.host, target.port), timeout=timeout_s)
    except OSError as exc:
        report.reason = f"cannot connect to {target.host}:{target.port} ({_reason_of(exc)})"
        return report
    report.connected = True
    with raw:
        tls = _handshake(raw, context, target.host, report)
        if tls is None:
            return report
        with tls:
            _describe_session(tls, report)
            answer = _exchange(tls, target, report)
    if answer is not None:
        _judge(answer, with_token, challenge, report)
    return report


def _handshake(raw: socket.socket, context: ssl.SSLContext, host: str,
               report: ProbeReport) -> ssl.SSLSocket | None:
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        report.reason = f"server certificate not trusted ({exc.verify_message}); pass --ca " \
                        "with the CA that issued it"
    except ssl.SSLError as exc:
        report.accepted = False if _is_alert(exc) else None
        who = "the client certificate" if report.client_cert else "a client without certificate"
        report.reason = (f"refused in the TLS handshake ({_reason_of(exc)}); the server "
                         f"did not accept {who}" if _is_alert(exc)
                         else f"TLS handshake failed ({_reason_of(exc)})")
    except (TimeoutError, socket.timeout):
        report.reason = "TLS handshake timed out"
    except OSError as exc:
        report.accepted = False
        report.reason = f"connection closed during the TLS handshake ({_reason_of(exc)})"
    return None


def _describe_session(tls: ssl.SSLSocket, report: ProbeReport) -> None:
    report.protocol = tls.version()
    cipher = tls.cipher()
    report.cipher = f"{cipher[0]} ({cipher[2]} bits)" if cipher else None
    der = tls.getpeercert(binary_form=True)
    if der:
        report.server_chain.append(_server_cert_json(der))


def _server_cert_json(der: bytes) -> dict[str, Any]:
    facts = cert_facts(x509.load_der_x509_certificate(der), "<server>")
    now = datetime.now(timezone.utc)
    return {"subject": facts.subject, "sans": list(facts.sans), "issuer": facts.issuer,
            "not_before": facts.not_before.isoformat(), "not_after": facts.not_after.isoformat(),
            "days_left": round(facts.seconds_left(now) / 86400, 2), "sha256": facts.sha256}


def _exchange(tls: ssl.SSLSocket, target: Target, report: ProbeReport) -> HTTPAnswer | None:
    """TLS 1.3: the handshake ends before the server checked our certificate, so only an
    HTTP answer proves acceptance; EOF, a reset or an alert mean refusal."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    request = (f"GET {target.path} HTTP/1.1\r\nHost: {host}:{target.port}\r\n"
               "User-Agent: sidecar-certs-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n")
    try:
        tls.sendall(request.encode("ascii"))
        return _read_answer(tls)
    except (TimeoutError, socket.timeout):
        report.reason = "no HTTP answer before the timeout"
    except (_Refused, ssl.SSLError, ConnectionError) as exc:
        report.accepted = False
        who = "the client certificate" if report.client_cert else "a client without certificate"
        detail = f" ({_reason_of(exc)})" if not isinstance(exc, _Refused) else f" ({exc})"
        report.reason = f"refused: the server did not accept {who}{detail}"
    except OSError as exc:
        report.reason = f"connection failed after the handshake ({_reason_of(exc)})"
    except ValueError as exc:
        report.accepted = True
        report.reason = f"the server's answer is not HTTP/1.x ({exc})"
    return None


def _read_answer(tls: ssl.SSLSocket) -> HTTPAnswer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            if data:
                raise ValueError("connection closed inside the response headers")
            raise _Refused("connection closed without an answer")
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            raise ValueError("response headers too large")
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    return HTTPAnswer(status, _read_body(tls, headers, body))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("iso-8859-1").split("\r\n")
    match = re.match(r"^HTTP/1\.[01] (\d{3})(?: |$)", lines[0])
    if match is None:
        raise ValueError("no HTTP/1.x status line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(match.group(1)), headers


def _read_body(tls: ssl.SSLSocket, headers: dict[str, str], body: bytes) -> bytes:
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    want = int(length) if length and length.isdigit() and not chunked else None
    while want is None or len(body) < want:
        if len(body) > MAX_RESPONSE_BYTES or (chunked and body.endswith(b"0\r\n\r\n")):
            break
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            break  # some servers end a Connection: close answer without close_notify
        if not chunk:
            break
        body += chunk
    if chunked:
        return _dechunk(body)
    return body[:want] if want is not None else body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def _judge(answer: HTTPAnswer, with_token: bool, challenge: str, report: ProbeReport) -> None:
    report.accepted = True
    report.http_status = answer.status
    if not with_token:
        report.ok = True
        report.reason = f"accepted: the server answered HTTP {answer.status}"
        return
    report.verification_ok = answer.status == 200 and answer.body == challenge.encode()
    report.ok = report.verification_ok
    if report.verification_ok:
        report.reason = "accepted: the verification GET was answered with the challenge"
    elif answer.status != 200:
        report.reason = (f"accepted, but the verification GET was answered HTTP "
                         f"{answer.status} (expected 200 with the challenge; wrong token?)")
    else:
        report.reason = (f"accepted, but the 200 answer ({len(answer.body)} bytes) is not the "
                         "challenge")


def _is_alert(exc: ssl.SSLError) -> bool:
    return "ALERT" in (exc.reason or "").upper() or "alert" in str(exc)


def _reason_of(exc: BaseException) -> str:
    """A short, secret-free reason: the OpenSSL reason, or errno text, or the class name."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text if text and len(text) < 200 else type(exc).__name__


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
            print(f"{label:<13} {value}")
    word = "OK" if report.ok else ("REFUSED" if report.accepted is False else "FAILED")
    print(f"result: {word} — {report.reason}")
    sys.stdout.flush()
