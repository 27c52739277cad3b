"""Property tests over the whole request pipeline of the public app (issue 6, item 1).

The real Starlette app from ``build_public_app`` is driven in-process through
``httpx.ASGITransport``; only the ingest is a fake that records what it was handed.
Each property states what the SPEC (§2, §4) promises for a class of hostile input:
the answer is one of the SPEC's status codes (never 500), nothing unverified reaches
the ingest (the spool or the upstream), and no answer carries a secret or a traceback.
Example counts are bounded so the file runs in CI time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from sidecar.app.public import MAX_CHALLENGE_LENGTH, RequestSettings, build_public_app
from sidecar.checks.payload import KNOWN_FIELDS, MAX_DEPTH, check_change_value, parse_envelopes
from sidecar.checks.signature import SignatureVerifier, sign
from sidecar.errors import BadPayload, SpoolUnavailable, UpstreamUnavailable
from sidecar.events import content_event_id
from sidecar.metrics import Metrics
from sidecar.checks.schemas import SPLIT_ARRAYS
from sidecar.normalize import SPLIT_FIELDS, Normalized
from sidecar.tools.samples import SAMPLE_FIELDS, sample_delivery, sample_status_delivery
from sidecar.secret import Secret

_CONSUMED = {"messaging_product", "metadata", "contacts", *SPLIT_ARRAYS}
PATH = "/whatsapp"
APP_SECRET = "fuzz-app-secret-6c1f0e9a2b7d4c33"
OLD_APP_SECRET = "fuzz-old-app-secret-93b2a4e1d07f"  # a second secret, as during rotation
VERIFY_TOKEN = "fuzz-verify-token-d41d8cd98f00"
SECRETS = (APP_SECRET, OLD_APP_SECRET)
RECEIVED = datetime(2026, 11, 24, 10, 15, 0, 412000, tzinfo=timezone.utc)
MAX_BODY = 2 * 1024 * 1024

def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- harness


class RecordingIngest:
    """The ingest as the app sees it; remembers every delivery it was handed."""

    def __init__(self) -> None:
        self.accepted: list[Normalized] = []

    async def accept(self, normalized: Normalized) -> None:
        self.accepted.append(normalized)


class FailingIngest:
    """An ingest whose spool (or upstream) is down: every accept raises."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def accept(self, normalized: Normalized) -> None:
        self.calls += 1
        raise self.error


def make_app(ingest: object, *, max_body_bytes: int = MAX_BODY,
             unknown_fields: str = "forward") -> tuple[object, Metrics]:
    current = RequestSettings(
        verifier=SignatureVerifier([Secret(s) for s in SECRETS]),
        verify_token=Secret(VERIFY_TOKEN),
        unknown_fields=unknown_fields,
    )
    metrics = Metrics()
    app = build_public_app(path=PATH, settings=lambda: current, ingest=ingest,  # type: ignore[arg-type]
                           metrics=metrics, max_body_bytes=max_body_bytes, body_timeout_s=10.0,
                           clock=lambda: RECEIVED)
    return app, metrics


def request(app: object, method: str, url: str | httpx.URL, *, content: object = None,
            headers: dict[str, str | bytes] | None = None,
            params: list[tuple[str, str]] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://sidecar.test") as c:
            return await c.request(method, url, content=content,  # type: ignore[arg-type]
                                   headers=headers, params=params)

    return asyncio.run(go())


def post(app: object, body: bytes, signature: str | bytes | None) -> httpx.Response:
    headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    return request(app, "POST", PATH, content=body, headers=headers)


def signed(body: bytes, secret: str = APP_SECRET) -> str:
    return sign(Secret(secret), body)


def assert_safe(response: httpx.Response) -> None:
    """Never a 500, a traceback or a secret, whatever the request."""
    assert response.status_code != 500
    body = response.content
    assert b"Traceback" not in body
    assert b'File "' not in body
    for secret in (APP_SECRET, OLD_APP_SECRET, VERIFY_TOKEN):
        assert secret.encode() not in body
    for value in response.headers.values():
        assert not any(secret in value for secret in SECRETS + (VERIFY_TOKEN,))


def assert_json_error(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}
    assert isinstance(payload["error"], str)
    assert 0 < len(payload["error"]) <= 200


def assert_events_well_formed(normalized: Normalized) -> None:
    for item in normalized.events:
        assert item.id.startswith("evt_") and len(item.id) == 36
        assert item.type.startswith("whatsapp.")
        assert isinstance(item.data, dict)
    for change in normalized.quarantined:
        assert change.id.startswith("evt_")
        assert isinstance(change.value, dict)


def assert_accepted(response: httpx.Response, ingest: RecordingIngest) -> Normalized:
    """A 200: exactly one delivery reached the ingest, and the answer counts it."""
    assert response.status_code == 200, response.text
    assert len(ingest.accepted) == 1
    normalized = ingest.accepted[0]
    assert response.json() == {"status": "accepted", "events": len(normalized.events),
                               "quarantined": len(normalized.quarantined)}
    assert_events_well_formed(normalized)
    return normalized


def dumps(value: object, *, ascii_only: bool = True) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")


VALID_BODIES = [dumps(sample_delivery(f)) for f in SAMPLE_FIELDS] + [
    dumps(sample_status_delivery()),
    dumps([sample_delivery("messages"), sample_delivery("security")]),  # array form
]


# --------------------------------------------------------------------------- 1. any bytes, signed

_INTERESTING_BODIES = [
    b"", b" ", b"\n", b"null", b"0", b"[]", b"{}", b'""', b"[{}]", b"\xef\xbb\xbf{}",
    b'{"object":"whatsapp_business_account"}',
    b'{"object":"whatsapp_business_account","entry":[]}',  # valid: no entries at all
    b'{"object":"whatsapp_business_account","entry":{}}',
    b'{"object":"instagram","entry":[]}',
    b"[" * 5000, b"{" * 5000, b"NaN", b"\xff\xfe",
]

SMALL_MAX = 512


@fuzz(250)
@given(body=st.binary(max_size=2 * SMALL_MAX) | st.sampled_from(_INTERESTING_BODIES + VALID_BODIES[:3]),
       secret=st.sampled_from(SECRETS))
def test_any_bytes_correctly_signed_get_200_400_or_413(body: bytes, secret: str) -> None:
    ingest = RecordingIngest()
    app, _ = make_app(ingest, max_body_bytes=SMALL_MAX)
    response = post(app, body, signed(body, secret))
    event(f"status {response.status_code}")
    assert_safe(response)
    if len(body) > SMALL_MAX:
        assert response.status_code == 413
    else:
        try:
            parse_envelopes(body)
            parses = True
        except BadPayload:
            parses = False
        assert response.status_code == (200 if parses else 400)
    if response.status_code == 200:
        assert_accepted(response, ingest)
    else:
        assert_json_error(response)
        assert ingest.accepted == []


# --------------------------------------------------------------------------- 2. bad signature


def _flip_hex_digit(digest_hex: str, at: int, to: str) -> str:
    """``digest_hex`` with the digit at ``at`` replaced by a different hex value."""
    if to.lower() == digest_hex[at].lower():
        to = "0" if digest_hex[at].lower() != "0" else "1"
    return digest_hex[:at] + to + digest_hex[at + 1:]


@st.composite
def _bad_signature(draw: st.DrawFn, body: bytes) -> str | bytes | None:
    good_hex = signed(body)[len("sha256="):]
    kind = draw(st.sampled_from([
        "missing", "empty", "random_text", "random_bytes", "random_hex", "other_secret",
        "other_body", "flipped", "truncated", "extended", "sha1", "no_prefix", "bare_prefix",
        "prefixed_random",
    ]))
    if kind == "missing":
        return None
    if kind == "empty":
        return ""
    if kind == "random_text":
        return draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120))
    if kind == "random_bytes":
        return draw(st.binary(max_size=120))
    if kind == "random_hex":
        return "sha256=" + draw(st.text("0123456789abcdefABCDEF", min_size=64, max_size=64))
    if kind == "other_secret":
        return sign(Secret(draw(st.text(min_size=1, max_size=30).filter(
            lambda s: s not in SECRETS))), body)
    if kind == "other_body":
        extra = draw(st.binary(min_size=1, max_size=8))
        return signed(body + extra)
    if kind == "flipped":
        at = draw(st.integers(0, 63))
        return "sha256=" + _flip_hex_digit(good_hex, at, draw(st.sampled_from("0123456789abcdef")))
    if kind == "truncated":
        return "sha256=" + good_hex[:draw(st.integers(0, 63))]
    if kind == "extended":
        return "sha256=" + good_hex + draw(st.text("0123456789abcdef", min_size=1, max_size=4))
    if kind == "sha1":
        return "sha1=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha1).hexdigest()
    if kind == "no_prefix":
        return good_hex
    if kind == "bare_prefix":
        return "sha256="
    # "prefixed_random": the right prefix and length, anything in it
    return "sha256=" + draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                    min_size=64, max_size=64))


@fuzz(250)
@given(data=st.data(),
       body=st.binary(max_size=SMALL_MAX) | st.sampled_from(VALID_BODIES[:4] + [b""]))
def test_unverified_bodies_get_401_and_reach_nothing(data: st.DataObject, body: bytes) -> None:
    header = data.draw(_bad_signature(body), label="signature")
    ingest = RecordingIngest()
    app, metrics = make_app(ingest)
    response = post(app, body, header)
    assert_safe(response)
    assert response.status_code == 401, (header, response.text)
    assert_json_error(response)
    assert ingest.accepted == []
    assert metrics.registry.get_sample_value("sidecar_signature_failures_total") == 1


@fuzz(30)
@given(data=st.data(), extra=st.integers(1, 64))
def test_unverified_oversized_bodies_get_413_and_reach_nothing(
        data: st.DataObject, extra: int) -> None:
    body = b"x" * (SMALL_MAX + extra)
    header = data.draw(_bad_signature(body) | st.just(signed(body)), label="signature")
    ingest = RecordingIngest()
    app, _ = make_app(ingest, max_body_bytes=SMALL_MAX)
    response = post(app, body, header)
    assert_safe(response)
    assert response.status_code == 413
    assert_json_error(response)
    assert ingest.accepted == []


# --------------------------------------------------------------------------- 3. mutated samples

_SPLICES = [b"\\ud800", b"\\udfff", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400",
            b"[", b"{", b"}", b"]", b'"', b"\\", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80",
            b"\xef\xbb\xbf", b"\x00", b"-", b"null", b"true", b",", b":", b'"a":1,',
            b'"object":"whatsapp_business_account",', b'"id":"1",', b"1" + b"0" * 5000,
            b"[" * 10_000, b"0" * 4000]


@st.composite
def _mutated_sample(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(
            ["flip", "delete", "insert", "splice", "truncate", "duplicate", "swap"]))
        if action == "flip" and at < len(body):
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "delete":
            del body[at:at + draw(st.integers(1, 16))]
        elif action == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "splice":
            body[at:at] = draw(st.sampled_from(_SPLICES))
        elif action == "truncate":
            del body[at:]
        elif action == "duplicate":  # repeat a span: duplicate keys, elements, brackets
            end = draw(st.integers(at, min(len(body), at + 64)))
            body[end:end] = body[at:end]
        elif action == "swap" and at < len(body):
            other = draw(st.integers(0, len(body) - 1))
            body[at], body[other] = body[other], body[at]
    return bytes(body)


@fuzz(300)
@given(body=_mutated_sample(), secret=st.sampled_from(SECRETS))
def test_mutated_samples_signed_never_500(body: bytes, secret: str) -> None:
    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    response = post(app, body, signed(body, secret))
    event(f"status {response.status_code}")
    assert_safe(response)
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        parse_envelopes(body)  # accepted only what the strict parser accepts
        assert_accepted(response, ingest)
    else:
        assert_json_error(response)
        assert ingest.accepted == []


# Exact outcomes for tokens spliced in as the value of an extra key ("fuzz"), which every
# schema allows.  Levels: the envelope object is level 1, so a value directly inside it
# starts at level 2; inside an entry at 4; inside a change's value at 7.
_LEVEL = {"envelope": 2, "entry": 4, "value": 7}


def _nest(depth: int, leaf: bytes = b"0") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


_TOKENS: list[tuple[str, Callable[[int], bytes], int]] = [
    # name, token(level) → bytes, expected status
    ("NaN", lambda _: b"NaN", 400),
    ("Infinity", lambda _: b"Infinity", 400),
    ("-Infinity", lambda _: b"-Infinity", 400),
    ("1e400", lambda _: b"1e400", 400),
    ("-1e400", lambda _: b"-1e400", 400),
    ("float with 400 digits", lambda _: b"1" + b"0" * 400 + b".5", 400),
    ("1e308", lambda _: b"1e308", 200),
    ("tiny float", lambda _: b"0." + b"0" * 5000 + b"1", 200),
    ("int of 5001 digits", lambda _: b"1" + b"0" * 5000, 400),
    ("int of 4000 digits", lambda _: b"9" * 4000, 400),  # past a double, as 1e400
    ("int of 309 digits past the largest double", lambda _: b"2" + b"0" * 308, 400),
    ("int of 309 digits under the largest double", lambda _: b"1" + b"0" * 308, 200),
    ("negative int past a double", lambda _: b"-" + b"9" * 309, 400),
    ("string of 400 digits", lambda _: b'"' + b"9" * 400 + b'"', 200),
    ("leading zero", lambda _: b"01", 400),
    ("negative zero", lambda _: b"-0", 200),
    ("True", lambda _: b"True", 400),
    ("null", lambda _: b"null", 200),
    ("lone high surrogate", lambda _: b'"\\ud800"', 400),
    ("lone low surrogate", lambda _: b'"x\\uDFFFy"', 400),
    ("high surrogate then text", lambda _: b'"\\ud83dx"', 400),
    ("surrogate pair", lambda _: b'"\\ud83d\\ude00"', 200),
    ("escaped backslash then u-d800", lambda _: b'"\\\\ud800"', 200),
    ("lone surrogate key", lambda _: b'{"\\udc00": 1}', 400),
    ("lone surrogate in array", lambda _: b'[1, ["\\uD8FF"]]', 400),
    ("invalid UTF-8 byte", lambda _: b'"\xff"', 400),
    ("overlong UTF-8", lambda _: b'"\xc0\xaf"', 400),
    ("UTF-8-encoded surrogate", lambda _: b'"\xed\xa0\x80"', 400),
    ("truncated UTF-8", lambda _: b'"\xe2\x82"', 400),
    ("valid UTF-8", lambda _: '"é€😀"'.encode(), 200),
    ("raw control character", lambda _: b'"\x01"', 400),
    ("escaped NUL", lambda _: b'"\\u0000"', 200),
    ("bad escape", lambda _: b'"\\x41"', 400),
    ("duplicate keys inside", lambda _: b'{"a": 1, "a": 2}', 400),
    ("duplicate fuzz key", lambda _: b'1, "fuzz": 2', 400),
    ("distinct keys", lambda _: b'{"a": 1, "A": 2}', 200),
    ("nested to the limit", lambda level: _nest(MAX_DEPTH - level + 1), 200),
    ("nested one past the limit", lambda level: _nest(MAX_DEPTH - level + 2), 400),
    ("objects nested past the limit",
     lambda level: b'{"a":' * (MAX_DEPTH - level + 2) + b"1" + b"}" * (MAX_DEPTH - level + 2),
     400),
    ("nested 900 levels", lambda _: _nest(900), 400),
    ("nested 10000 levels", lambda _: _nest(10_000), 400),
    ("10000 open brackets", lambda _: b"[" * 10_000, 400),
    ("string of 1 MB", lambda _: b'"' + b"x" * 1_000_000 + b'"', 200),
    ("string of 1 MB of escapes", lambda _: b'"' + b"\\u00e9" * 170_000 + b'"', 200),
    ("string past the body limit", lambda _: b'"' + b"x" * MAX_BODY + b'"', 413),
]


def _with_token(field: str, where: str, token: bytes, *, status: bool) -> tuple[bytes, object]:
    envelope = sample_status_delivery() if status else sample_delivery(field)
    target = {"envelope": envelope, "entry": envelope["entry"][0],
              "value": envelope["entry"][0]["changes"][0]["value"]}[where]
    target["fuzz"] = "__FUZZ__"
    body = dumps(envelope)
    assert body.count(b'"__FUZZ__"') == 1
    return body.replace(b'"__FUZZ__"', token), envelope


@pytest.mark.parametrize("name,token,expected", _TOKENS, ids=[t[0] for t in _TOKENS])
@fuzz(4)
@given(field=st.sampled_from(SAMPLE_FIELDS), where=st.sampled_from(sorted(_LEVEL)),
       status=st.booleans())
def test_hostile_json_in_a_signed_sample_gets_its_exact_status(
        name: str, token: Callable[[int], bytes], expected: int,
        field: str, where: str, status: bool) -> None:
    raw_token = token(_LEVEL[where])
    body, _ = _with_token(field, where, raw_token, status=status)
    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    response = post(app, body, signed(body))
    assert_safe(response)
    assert response.status_code == expected, response.text
    if expected != 200:
        assert_json_error(response)
        assert ingest.accepted == []
        return
    normalized = assert_accepted(response, ingest)
    assert normalized.quarantined == []
    assert normalized.events
    if where == "value" and not status:
        # The unknown key is kept, never stripped, and arrives exactly as sent: in the
        # one event of a whole change, or beside a split change's elements in an event
        # of its own.
        (only,) = [e for e in normalized.events if "fuzz" in e.data]
        assert only.data["fuzz"] == json.loads(raw_token)
        assert only.type == f"whatsapp.{field}"


@pytest.mark.parametrize("prefix,suffix,expected", [
    (b"\xef\xbb\xbf", b"", 400),  # a byte order mark
    (b" \t\r\n", b" \n", 200),  # JSON whitespace around the document
    (b"", b"x", 400),  # trailing garbage
    (b"", b"{}", 400),  # a second document
    (b"\x00", b"", 400),
    (b"\xc2\xa0", b"", 400),  # a non-JSON whitespace
])
def test_bytes_around_a_signed_sample_get_their_exact_status(
        prefix: bytes, suffix: bytes, expected: int) -> None:
    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    body = prefix + VALID_BODIES[0] + suffix
    response = post(app, body, signed(body))
    assert_safe(response)
    assert response.status_code == expected
    assert len(ingest.accepted) == (1 if expected == 200 else 0)


@pytest.mark.parametrize("where", ["envelope", "entry", "change"])
def test_duplicate_envelope_keys_are_400(where: str) -> None:
    envelope = sample_delivery("account_update")
    key, target = {"envelope": ("object", envelope), "entry": ("id", envelope["entry"][0]),
                   "change": ("field", envelope["entry"][0]["changes"][0])}[where]
    target["__DUP__"] = "__DUP__"
    body = dumps(envelope).replace(b'"__DUP__": "__DUP__"',
                                   f'"{key}": {json.dumps(target[key])}'.encode())
    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    response = post(app, body, signed(body))
    assert_safe(response)
    assert response.status_code == 400
    assert "duplicate" in response.json()["error"]
    assert ingest.accepted == []


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_body_past_the_limit_is_413_declared_or_streamed(declared: bool) -> None:
    body = b'"' + b"x" * MAX_BODY + b'"'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    response = request(app, "POST", PATH, content=body if declared else chunks(),
                       headers={"x-hub-signature-256": signed(body)})
    assert_safe(response)
    assert response.status_code == 413
    assert_json_error(response)
    assert ingest.accepted == []


# --------------------------------------------------------------------------- 4. random values

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                               max_size=4),
    max_leaves=25,
)
_UNKNOWN_FIELD = st.text(max_size=30).filter(lambda f: f not in KNOWN_FIELDS)


@st.composite
def _change(draw: st.DrawFn) -> tuple[str, object]:
    field = draw(st.sampled_from(sorted(KNOWN_FIELDS)) | _UNKNOWN_FIELD)
    how = draw(st.sampled_from(["any", "object", "sample_patched"]))
    if how == "any":
        value = draw(_JSON)
    elif how == "object":
        value = draw(st.dictionaries(st.text(max_size=10), _JSON, max_size=5))
    else:  # mostly fits its schema: the sample's value with some keys replaced or added
        if field in SAMPLE_FIELDS:
            source = sample_delivery(field)
        else:
            source = sample_delivery(draw(st.sampled_from(SAMPLE_FIELDS)))
        value = source["entry"][0]["changes"][0]["value"]
        keys = sorted(value) + ["extra"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=2)):
            value[key] = draw(_JSON)
    return field, value


def _expected_events(field: str, value: dict[str, object], policy: str) -> tuple[list[str], int]:
    """The event types and the quarantined count one change yields (normalize's contract)."""
    if field not in KNOWN_FIELDS:
        return ([] if policy == "drop" else [f"whatsapp.{field}"]), 0
    if check_change_value(field, value) is not None:
        return [], 1
    if field not in SPLIT_FIELDS:
        return [f"whatsapp.{field}"], 0
    types = [kind for key, (kind, _) in SPLIT_ARRAYS.items()
             for _ in value.get(key, [])]  # type: ignore[attr-defined]
    if not _CONSUMED.issuperset(value):  # a key beside the arrays: forwarded on its own
        types.append(f"whatsapp.{field}")
    return types, 0


@fuzz(250)
@given(changes=st.lists(_change(), min_size=1, max_size=3),
       time=st.none() | st.integers(0, 2**63 - 1) | st.just(253_402_300_800),
       policy=st.sampled_from(["forward", "drop"]), ascii_only=st.booleans(),
       as_array=st.booleans())
def test_any_json_value_in_a_valid_envelope(
        changes: list[tuple[str, object]], time: int | None, policy: str, ascii_only: bool,
        as_array: bool) -> None:
    entry: dict[str, object] = {"id": "102290129340398",
                                "changes": [{"field": f, "value": v} for f, v in changes]}
    if time is not None:
        entry["time"] = time
    envelope = {"object": "whatsapp_business_account", "entry": [entry]}
    body = dumps([envelope] if as_array else envelope, ascii_only=ascii_only)
    ingest = RecordingIngest()
    app, _ = make_app(ingest, unknown_fields=policy)
    response = post(app, body, signed(body))
    event(f"status {response.status_code}")
    assert_safe(response)
    if not all(isinstance(value, dict) for _, value in changes):
        # A change whose value is not an object breaks the envelope itself.
        assert response.status_code == 400
        assert_json_error(response)
        assert ingest.accepted == []
        return
    normalized = assert_accepted(response, ingest)  # never 400 once the envelope is valid
    types: list[str] = []
    quarantined = 0
    for field, value in changes:
        more_types, more_quarantined = _expected_events(field, value, policy)  # type: ignore[arg-type]
        types += more_types
        quarantined += more_quarantined
    event(f"events {min(len(types), 2)}, quarantined {min(quarantined, 2)}")
    assert [e.type for e in normalized.events] == types
    assert len(normalized.quarantined) == quarantined
    for change in normalized.quarantined:
        assert change.field in KNOWN_FIELDS
        assert (change.field, change.value) in changes  # kept unmodified
        assert change.reason
    forwarded = [(f, v) for f, v in changes if f not in KNOWN_FIELDS and policy == "forward"]
    whole = [e for e in normalized.events if e.field not in KNOWN_FIELDS]
    assert len(whole) == len(forwarded)
    for forwarded_event, (field, value) in zip(whole, forwarded):
        assert forwarded_event.field == field
        assert forwarded_event.data == value  # forwarded as is
        assert forwarded_event.id == content_event_id("102290129340398", field, time, value)
    # The same delivery again yields the same ids (Meta's retries deduplicate).
    again = RecordingIngest()
    app, _ = make_app(again, unknown_fields=policy)
    assert post(app, body, signed(body)).status_code == 200
    assert [e.id for e in again.accepted[0].events] == [e.id for e in normalized.events]


# --------------------------------------------------------------------------- 5. verification GET

_QUERY_KEY = st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge"]) | st.text(
    max_size=12)
_QUERY_VALUE = (st.sampled_from(["subscribe", VERIFY_TOKEN, "", "Subscribe", "subscribe ",
                                 VERIFY_TOKEN + " ", VERIFY_TOKEN[:-1], "1158201444"])
                | st.text(max_size=20)
                | st.integers(MAX_CHALLENGE_LENGTH - 2, MAX_CHALLENGE_LENGTH + 2).map(
                    lambda n: "c" * n))


@st.composite
def _verification_query(draw: st.DrawFn) -> list[tuple[str, str]]:
    pairs = draw(st.lists(st.tuples(_QUERY_KEY, _QUERY_VALUE), max_size=5))
    if draw(st.booleans()):  # a mostly well-formed handshake, maybe perturbed
        pairs = [("hub.mode", "subscribe"), ("hub.verify_token", VERIFY_TOKEN),
                 ("hub.challenge", draw(_QUERY_VALUE))] + pairs
        pairs = draw(st.permutations(pairs))
    return pairs


def _expected_verification(query: bytes) -> tuple[int, str | None]:
    """The status, and the body of a 200, for a verification GET with this raw query."""
    # The query string is parsed like any form; a repeated key's last value wins.
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    mode, token = params.get("hub.mode"), params.get("hub.verify_token")
    challenge = params.get("hub.challenge")
    if mode != "subscribe" or token != VERIFY_TOKEN:
        return 403, None
    if not challenge or len(challenge) > MAX_CHALLENGE_LENGTH:
        return 400, None
    return 200, challenge


def _check_verification(response: httpx.Response, query: bytes) -> None:
    assert response.status_code in (200, 400, 403)
    expected, challenge = _expected_verification(query)
    event(f"status {expected}")
    assert response.status_code == expected, (query, response.text)
    if expected == 403:
        assert_safe(response)
        assert response.content == b"Forbidden"  # the challenge is not echoed
    elif expected == 400:
        assert_safe(response)
        assert_json_error(response)
    else:
        # Only the challenge itself comes back, exactly, as plain text.
        assert challenge is not None
        assert response.headers["content-type"].startswith("text/plain")
        assert response.content == challenge.encode("utf-8")


@fuzz(250)
@given(pairs=_verification_query())
def test_verification_get_with_any_query(pairs: list[tuple[str, str]]) -> None:
    app, _ = make_app(RecordingIngest())
    response = request(app, "GET", PATH, params=pairs)
    _check_verification(response, response.request.url.query)


def asgi(app: object, method: str, path: bytes, *, query: bytes = b"", body: bytes = b"",
         headers: list[tuple[bytes, bytes]] | None = None) -> httpx.Response:
    """One request handed to the app byte for byte, as a server would pass it (an HTTP
    client would refuse or re-encode many of these paths and query strings)."""
    messages: list[dict[str, object]] = []
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "https",
             "path": path.decode("utf-8", "replace"), "raw_path": path,
             "root_path": "", "query_string": query,
             "headers": [(b"host", b"sidecar.test"),
                         (b"content-length", str(len(body)).encode()), *(headers or [])],
             "client": ("192.0.2.1", 40000), "server": ("sidecar.test", 443)}
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    start, *bodies = messages
    return httpx.Response(start["status"], headers=start["headers"],  # type: ignore[arg-type]
                          content=b"".join(m.get("body", b"") for m in bodies))  # type: ignore[misc]


_RAW_QUERY = st.binary(max_size=80) | st.lists(
    st.sampled_from([b"hub.mode=subscribe", b"hub.verify_token=" + VERIFY_TOKEN.encode(),
                     b"hub.challenge=", b"hub.challenge=42", b"hub%2Emode=subscribe",
                     b"hub.mode=subscrib%65", b"hub.challenge=%ff%fe", b"hub.challenge=%",
                     b"hub.challenge=a+b%20c", b"hub.challenge=\xff\x00", b"&", b"=", b";",
                     b"hub.verify_token", b"hub.challenge=" + b"z" * MAX_CHALLENGE_LENGTH]),
    max_size=6).map(b"&".join)


@fuzz(200)
@given(query=_RAW_QUERY)
def test_verification_get_with_a_raw_query_string(query: bytes) -> None:
    app, _ = make_app(RecordingIngest())
    _check_verification(asgi(app, "GET", PATH.encode(), query=query), query)


@fuzz(60)
@given(method=st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]),
       body=st.sampled_from(VALID_BODIES[:2] + [b""]))
def test_other_methods_are_405_and_reach_nothing(method: str, body: bytes) -> None:
    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    response = request(app, method, PATH, content=body,
                       headers={"x-hub-signature-256": signed(body)})
    assert_safe(response)
    assert response.status_code == 405
    assert ingest.accepted == []


@fuzz(150)
@given(path=st.binary(max_size=30).map(lambda p: b"/" + p)
       | st.sampled_from([b"/", b"//whatsapp", b"/whatsapp/", b"/WhatsApp", b"/whatsapp/x",
                          b"/whatsapp%2F", b"/whatsapp/.", b"/whatsapp/..", b"/./whatsapp",
                          b"/whatsapp\x00", b"/whatsapp;x", b"/whatsapp//"]),
       method=st.sampled_from(["GET", "POST"]))
@example(path=b"/whatsapp/", method="POST")  # no slash redirect (it echoed the query)
@example(path=b"/whatsapp/", method="GET")
def test_other_paths_are_404_and_reach_nothing(path: bytes, method: str) -> None:
    assume(path.decode("utf-8", "replace") != PATH)
    body = VALID_BODIES[0]
    ingest = RecordingIngest()
    app, _ = make_app(ingest)
    query = b"hub.mode=subscribe&hub.verify_token=" + VERIFY_TOKEN.encode() + b"&hub.challenge=1"
    response = asgi(app, method, path, query=query, body=body,
                    headers=[(b"x-hub-signature-256", signed(body).encode())])
    assert_safe(response)
    assert response.status_code == 404, (path, response.status_code, response.headers)
    assert ingest.accepted == []


# --------------------------------------------------------------------------- 6. ingest down

_FAILURES = [
    SpoolUnavailable("spool unavailable (No space left on device)"),
    SpoolUnavailable("spool full"),
    SpoolUnavailable("spool write failed"),
    UpstreamUnavailable("upstream timed out"),
    UpstreamUnavailable("upstream answered HTTP 502", status=502),
]


@fuzz(60)
@given(error=st.sampled_from(_FAILURES), body=st.sampled_from(VALID_BODIES),
       secret=st.sampled_from(SECRETS))
def test_ingest_unavailable_is_503_with_a_short_json_error(
        error: Exception, body: bytes, secret: str) -> None:
    ingest = FailingIngest(error)
    app, _ = make_app(ingest)
    response = post(app, body, signed(body, secret))
    assert_safe(response)
    assert response.status_code == 503
    assert_json_error(response)
    assert response.json() == {"error": str(error)}
    assert ingest.calls == 1


@fuzz(60)
@given(body=_mutated_sample() | st.binary(max_size=200), good=st.booleans())
def test_ingest_unavailable_is_not_reached_by_refused_requests(body: bytes, good: bool) -> None:
    ingest = FailingIngest(SpoolUnavailable("spool full"))
    app, _ = make_app(ingest)
    response = post(app, body, signed(body) if good else signed(body, "not-the-secret"))
    assert_safe(response)
    try:
        parse_envelopes(body)
        parses = True
    except BadPayload:
        parses = False
    if not good:
        assert response.status_code == 401
        assert ingest.calls == 0
    elif not parses:
        assert response.status_code == 400
        assert ingest.calls == 0
    else:
        assert response.status_code == 503
        assert ingest.calls == 1
    assert_json_error(response)
