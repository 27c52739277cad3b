"""Property: whatever the bytes, parse_envelopes returns or raises BadPayload, and
normalize never fails on what parse_envelopes accepted."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.checks.payload import parse_envelopes
from sidecar.errors import BadPayload
from sidecar.normalize import normalize
from sidecar.tools.samples import SAMPLE_FIELDS, sample_delivery, sample_status_delivery

_RECEIVED = datetime(2026, 11, 24, 10, 15, 0, 412000, tzinfo=timezone.utc)
_BODIES = [json.dumps(sample_delivery(f)).encode() for f in SAMPLE_FIELDS] + [
    json.dumps(sample_status_delivery()).encode()
]
_INTERESTING = [b"\\ud800", b"NaN", b"[", b"{", b"}", b'"', b"\xff", b"\xef\xbb\xbf", b"1e999",
                b"-", b"null", b"true", b",", b":", b'"a":1,']


def _parse_and_normalize(raw: bytes) -> None:
    try:
        envelopes = parse_envelopes(raw)
    except BadPayload:
        return
    normalize(envelopes, received_at=_RECEIVED)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(raw: bytes) -> None:
    _parse_and_normalize(raw)


@st.composite
def _mutated_body(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(_BODIES)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["flip", "delete", "insert", "splice"]))
        if action == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif action == "delete":
            del body[at:at + draw(st.integers(1, 8))]
        elif action == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            body[at:at] = draw(st.sampled_from(_INTERESTING))
    return bytes(body)


@settings(max_examples=300, deadline=None)
@given(_mutated_body())
def test_mutated_sample_bodies(raw: bytes) -> None:
    _parse_and_normalize(raw)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(SAMPLE_FIELDS + ("history",)), value=_JSON, time=_JSON)
def test_arbitrary_values_in_a_valid_envelope(field: str, value: object, time: object) -> None:
    envelope = {"object": "whatsapp_business_account",
                "entry": [{"id": "1", "time": time, "changes": [{"field": field, "value": value}]}]}
    _parse_and_normalize(json.dumps(envelope).encode())
