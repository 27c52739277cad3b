"""Meta's ``X-Hub-Signature-256``: HMAC-SHA256(app secret, raw body bytes).

The raw bytes as received, never re-serialised JSON (Meta signs its escaped form).
The signature is the request's one ``X-Hub-Signature-256`` header, ``sha256=`` and
exactly 64 hex digits, nothing else (no whitespace inside, no second header: which of
two a proxy would pick is anyone's guess, so neither is trusted).
Several secrets may be configured at once so one can be rotated without downtime;
every secret is tried, each compare is constant-time, and the loop does not stop at
the first match so timing does not tell which secret matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from sidecar.errors import SignatureInvalid
from sidecar.secret import Secret

__all__ = ["SignatureVerifier", "sign"]

_PREFIX = "sha256="
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


def sign(secret: Secret, body: bytes) -> str:
    """The header value Meta would send for ``body`` (for send-test, demo and tests)."""
    return _PREFIX + hmac.new(secret.reveal().encode("utf-8"), body, hashlib.sha256).hexdigest()


class SignatureVerifier:
    __slots__ = ("_keyed",)

    def __init__(self, secrets: Sequence[Secret]) -> None:
        if not secrets:
            raise ValueError("at least one app secret is required")
        # Keyed HMAC objects are built once; each request copies one (no re-keying).
        self._keyed = tuple(hmac.new(s.reveal().encode("utf-8"), digestmod=hashlib.sha256)
                            for s in secrets)

    def verify(self, body: bytes, header: str | Sequence[str] | None) -> None:
        """Return if ``header`` is a valid signature of ``body``; else raise SignatureInvalid.

        ``header`` is the header's value, or every value the request carried (a list)."""
        if not isinstance(header, str) and header is not None:
            if len(header) > 1:
                raise SignatureInvalid("more than one X-Hub-Signature-256 header")
            header = header[0] if header else None
        if not header:
            raise SignatureInvalid("missing X-Hub-Signature-256 header")
        if not header.startswith(_PREFIX):
            raise SignatureInvalid("X-Hub-Signature-256 must be sha256=<hex>")
        hex_digest = header[len(_PREFIX):]
        if _HEX_DIGEST.fullmatch(hex_digest) is None:
            raise SignatureInvalid("X-Hub-Signature-256 must be sha256=<64 hex digits>")
        given = bytes.fromhex(hex_digest)
        matched = False
        for keyed in self._keyed:
            mac = keyed.copy()
            mac.update(body)
            matched |= hmac.compare_digest(mac.digest(), given)
        if not matched:
            raise SignatureInvalid("signature does not match the body")
