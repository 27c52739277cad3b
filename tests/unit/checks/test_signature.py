"""X-Hub-Signature-256: HMAC-SHA256 over the raw bytes, each way it refuses."""

from __future__ import annotations

import pytest

from sidecar.checks.signature import SignatureVerifier, sign
from sidecar.errors import SignatureInvalid
from sidecar.secret import Secret

OLD, NEW = Secret("old-app-secret"), Secret("new-app-secret-ä")
BODY = b'{"object":"whatsapp_business_account","entry":[]}'
verifier = SignatureVerifier([OLD, NEW])


def test_any_configured_secret_is_accepted() -> None:
    verifier.verify(BODY, sign(OLD, BODY))
    verifier.verify(BODY, sign(NEW, BODY))
    verifier.verify(BODY, sign(OLD, BODY).upper().replace("SHA256=", "sha256="))  # hex case
    verifier.verify(BODY, [sign(NEW, BODY)])  # the one header of a request


@pytest.mark.parametrize("header, reason", [
    (None, "missing"),
    ("", "missing"),
    ("sha1=" + "0" * 40, "sha256="),
    ("0" * 64, "sha256="),
    ("sha256=" + "0" * 63, "64 hex"),
    ("sha256=" + "g" * 64, "64 hex"),
    ("sha256= " + sign(OLD, BODY)[7:], "64 hex"),             # whitespace inside
    ("sha256=" + sign(OLD, BODY)[7:69] + " " + sign(OLD, BODY)[69:], "64 hex"),
    ("sha256=" + sign(OLD, BODY)[7:] + "\t", "64 hex"),
    ([sign(OLD, BODY), sign(OLD, BODY)], "more than one"),     # two headers, both right
    ([sign(OLD, BODY), "sha256=" + "0" * 64], "more than one"),
    ([], "missing"),
    ("sha256=" + "0" * 64, "does not match"),
    (sign(Secret("another-app"), BODY), "does not match"),
    (sign(OLD, BODY + b" "), "does not match"),          # one byte more
    (sign(OLD, BODY.replace(b":", b": ")), "does not match"),  # re-serialized
])
def test_refusals(header: str | list[str] | None, reason: str) -> None:
    with pytest.raises(SignatureInvalid, match=reason):
        verifier.verify(BODY, header)


def test_no_secrets_no_verifier() -> None:
    with pytest.raises(ValueError):
        SignatureVerifier([])


def test_secret_never_in_the_error() -> None:
    with pytest.raises(SignatureInvalid) as info:
        verifier.verify(BODY, "sha256=" + "1" * 64)
    assert "old-app-secret" not in str(info.value) and "new-app" not in str(info.value)
