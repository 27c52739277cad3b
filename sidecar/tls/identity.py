"""Who may connect: the client-certificate identity policy.

Knows certificates, not connections or HTTP (ghostunnel's ``auth`` package).  A
certificate is allowed when its subject CN, or one of its DNS SANs, equals one of the
configured names exactly, character for character (docs/checks.md: "matched exactly", as
ghostunnel's ``--allow-cn``): no substring, no wildcard, no case folding, no trailing
dot.  Meta's certificate carries the lower-case name it documents, so exactness costs
nothing and leaves no look-alike to reason about.  Chaining to a trusted CA is checked
by OpenSSL before this; it is never enough on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["IdentityPolicy", "peer_names"]

PeerCert = dict[str, Any]  # ssl.SSLObject.getpeercert() of a verified peer


def peer_names(peer_cert: PeerCert) -> tuple[list[str], list[str]]:
    """(common names, DNS SANs) of a certificate in ``getpeercert()`` form."""
    cns = [value for rdn in peer_cert.get("subject", ()) for key, value in rdn
           if key == "commonName"]
    sans = [value for kind, value in peer_cert.get("subjectAltName", ()) if kind == "DNS"]
    return cns, sans


class IdentityPolicy:
    __slots__ = ("allowed_names",)

    def __init__(self, allowed_names: Iterable[str]) -> None:
        self.allowed_names = frozenset(allowed_names)
        if not self.allowed_names:
            raise ValueError("IdentityPolicy needs at least one allowed name")

    def allows(self, peer_cert: PeerCert | None) -> bool:
        if not peer_cert:
            return False
        cns, sans = peer_names(peer_cert)
        # A certificate with several CNs is ambiguous; only a single CN counts.
        if len(cns) == 1 and cns[0] in self.allowed_names:
            return True
        return any(san in self.allowed_names for san in sans)

    def __repr__(self) -> str:
        return f"IdentityPolicy({sorted(self.allowed_names)!r})"

