"""Standard Webhooks signature headers for what we send upstream.

    webhook-id:        the event (or batch) id
    webhook-timestamp: unix seconds
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

The key is the base64-decoded part after ``whsec_`` when the secret has that prefix
(what Standard Webhooks libraries expect), else the secret's UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from sidecar.secret import Secret, standard_webhooks_key

__all__ = ["Signer"]


class Signer:
    """Signs bodies with one key, decoded once.  The config refuses a secret that has no
    key (``standard_webhooks_key``), naming the key at fault, before a Signer is made."""

    __slots__ = ("_key",)

    def __init__(self, secret: Secret) -> None:
        self._key = standard_webhooks_key(secret)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signed = f"{msg_id}.{timestamp}.".encode() + body
        mac = hmac.new(self._key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode("ascii"),
        }
