"""A value that must never be printed: logs, reprs and tracebacks show ``***``; and the
one rule for the HMAC key a signing secret stands for."""

from __future__ import annotations

import base64

__all__ = ["Secret", "standard_webhooks_key"]


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def standard_webhooks_key(secret: Secret) -> bytes:
    """The key of an upstream signing secret: the base64-decoded part after ``whsec_``
    when it has that prefix (what Standard Webhooks libraries expect), else its UTF-8
    bytes.  ``ValueError`` when a ``whsec_`` secret is not base64, or is of an empty key
    (``whsec_`` alone: anyone could sign with it).  Used where the config is checked and
    where requests are signed, so both agree."""
    raw = secret.reveal()
    if raw.startswith("whsec_"):
        key = base64.b64decode(raw[len("whsec_"):], validate=True)  # binascii.Error: ValueError
        if not key:
            raise ValueError("empty key")
        return key
    return raw.encode("utf-8")
