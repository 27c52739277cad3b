"""Audit the TLS files named under ``tls:`` (and ``upstream.ca_file``) and report every
problem, not just the first.

``load_material`` (in ``sidecar.tls.material``) stops at the first problem because the
server must refuse to start; an operator fixing a deployment wants the whole list at once.
So ``check_tls`` reads the same files with the same readers, applies the same rules
(``validity_problems``, ``key_problems``, ``client_ca_problems``: one wording) and
collects, per certificate or key: its facts, days left, chain signatures, CA pins, the
allowed client names, and what expires within ``warn_days``.  It prints nothing: ``sidecar certs check`` renders the ``CheckReport``.

Status per item: ``ok``, ``expiring`` (valid, but within ``warn_days``) or ``invalid``;
the report's status is the worst item's, and ``exit_code`` maps it to 0 / 1 / 2.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sidecar.config import Config
from sidecar.errors import TLSMaterialError
from sidecar.tls.material import (
    CertFacts,
    cert_facts,
    client_ca_problems,
    key_problems,
    read_pem_certs,
    read_private_key,
    validity_problems,
)

__all__ = [
    "OK",
    "EXPIRING",
    "INVALID",
    "CheckItem",
    "NameCheck",
    "CheckReport",
    "check_tls",
]

OK, EXPIRING, INVALID = "ok", "expiring", "invalid"
META_CA_PREFIX = "meta-outbound-api-ca"
META_CA_HINT = ("download it from Meta's mTLS for webhooks documentation; "
                "see certs/README.md")

_SEVERITY = {OK: 0, EXPIRING: 1, INVALID: 2}
_EXIT_CODES = {OK: 0, EXPIRING: 1, INVALID: 2}
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


@dataclass(slots=True)
class CheckItem:
    """One certificate or key file that ``check_tls`` looked at."""

    kind: str  # server_cert | server_key | client_ca | upstream_ca
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
    """One entry of ``tls.allowed_client_names``, with a warning if it cannot match well."""

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

    @property
    def counts(self) -> dict[str, int]:
        """How many items are ``ok``, ``expiring`` and ``invalid``."""
        return {s: sum(1 for i in self.items if i.status == s) for s in (OK, EXPIRING, INVALID)}

    def to_json(self) -> dict[str, object]:
        return {"ok": self.status == OK, "status": self.status, "warn_days": self.warn_days,
                "items": [item.to_json() for item in self.items],
                "allowed_client_names": [{"name": n.name, "warning": n.warning}
                                         for n in self.client_names]}


def check_tls(config: Config, *, warn_days: int, now: datetime | None = None) -> CheckReport:
    """Look at every file named under ``tls:`` and ``upstream.ca_file``, and collect every
    problem found."""
    now = now or datetime.now(timezone.utc)
    tls = config.tls
    server_items, chain = _check_server_chain(tls.cert_file, now, warn_days)
    key_item = _check_server_key(tls.key_file, chain, tls.cert_file)
    ca_items: list[CheckItem] = []
    for path in tls.client_ca_files:
        ca_items += _check_client_ca_file(path, tls.client_ca_sha256, now, warn_days)
    if config.upstream.ca_file is not None:
        ca_items += _check_upstream_ca_file(config.upstream.ca_file, now, warn_days)
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
        facts = cert_facts(cert, path)
        item = _cert_item("server_cert", facts, path, now, warn_days,
                          problems=validity_problems(facts, now))
        if index > 0 and item.problems:
            # As serve judges it (only the leaf's validity counts): an expired
            # cross-signed root at the end of a chain is skipped by clients that trust a
            # root further down.  Worth a look, not a refusal.
            item.warnings = [f"{item.problems[0]}; clients must reach a valid root without "
                             "it (serve accepts it: only the leaf's validity counts)"]
            item.problems = []
        item.extra["position"] = index
        if index + 1 < len(chain):
            _check_signature(item, cert, chain[index + 1])
        items.append(item)
    items[0].notes.append(_chain_note(chain))
    items[0].extra["chain"] = _chain_note(chain)
    if items[0].facts is not None and items[0].facts.is_ca:
        items[0].notes.append("the first certificate (the leaf) is a CA certificate")
    return items, chain


def _check_server_key(path: Path, chain: list[x509.Certificate], cert_path: Path) -> CheckItem:
    item = CheckItem("server_key", str(path))
    try:
        _, key = read_private_key(path)
    except TLSMaterialError as exc:
        item.problems.append(str(exc))
        return item
    if not chain:
        item.notes.append("readable; not matched (the server certificate is unusable)")
        item.extra["matches_leaf"] = None
        return item
    item.problems += key_problems(key, chain, cert_path)
    item.extra["matches_leaf"] = not item.problems
    if not item.problems:
        item.notes.append("readable; matches the leaf certificate")
    return item


def _check_client_ca_file(path: Path, pins: Sequence[str], now: datetime,
                          warn_days: int) -> list[CheckItem]:
    try:
        _, certs = read_pem_certs(path, "tls.client_ca_files")
    except TLSMaterialError as exc:
        return [CheckItem("client_ca", str(path), problems=[_missing_hint(path, str(exc))])]
    items = []
    for cert in certs:
        facts = cert_facts(cert, path)
        item = _cert_item("client_ca", facts, path, now, warn_days,
                          problems=client_ca_problems(facts, pins, now))
        item.extra["pinned"] = (facts.sha256 in pins) if pins else None
        items.append(item)
    return items


def _check_upstream_ca_file(path: Path, now: datetime, warn_days: int) -> list[CheckItem]:
    try:
        _, certs = read_pem_certs(path, "upstream.ca_file")
    except TLSMaterialError as exc:
        return [CheckItem("upstream_ca", str(path), problems=[str(exc)])]
    items = []
    for cert in certs:
        facts = cert_facts(cert, path)
        items.append(_cert_item("upstream_ca", facts, path, now, warn_days,
                                problems=validity_problems(facts, now)))
    return items


def _cert_item(kind: str, facts: CertFacts, path: Path, now: datetime, warn_days: int, *,
               problems: list[str]) -> CheckItem:
    days_left = facts.seconds_left(now) / 86400
    item = CheckItem(kind, str(path), facts=facts, days_left=round(days_left, 2),
                     problems=problems)
    if not problems and days_left < warn_days:
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
        leaf = chain[0]
        if leaf.issuer == leaf.subject:
            return "chain: leaf only (self-signed)"
        return (f"chain: leaf only; clients must have its issuer "
                f"'{leaf.issuer.rfc4514_string()}' (if that is an intermediate, add it to "
                "this file after the leaf)")
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
    if name != name.lower():
        return NameCheck(name, "has upper-case letters: names are matched exactly, case "
                               "included, and Meta's certificate is lower-case")
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        return NameCheck(name, "not a plausible DNS name: it can only match a CN with "
                               "exactly that text")
    return NameCheck(name, None)
