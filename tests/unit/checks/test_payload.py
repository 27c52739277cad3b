"""Unit tests for sidecar.checks.payload: strict JSON, envelope shape, field schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.checks.payload import (
    KNOWN_FIELDS,
    MAX_DEPTH,
    check_change_value,
    parse_envelopes,
    parse_json,
)
from sidecar.errors import BadPayload

# --------------------------------------------------------------------------- parse_json


def test_parse_json_accepts_plain_json() -> None:
    raw = '{"a": [1, 2.5, "é", true, null], "b": {"c": "\\ud83d\\ude00"}}'.encode()
    assert parse_json(raw) == {"a": [1, 2.5, "é", True, None], "b": {"c": "😀"}}


def test_parse_json_accepts_top_level_scalar() -> None:
    assert parse_json(b" 42 ") == 42


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a": "\xff"}', "UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # an encoded surrogate is not UTF-8
        (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"a": "x\\udc00y"}', "surrogate"),
        (b'{"\\ud800": 1}', "surrogate"),
        (b'[{"a": ["\\udbff"]}]', "surrogate"),
        (b'{"a": 1, "a": 2}', "duplicate"),
        (b'{"x": {"a": 1, "b": 2, "a": 1}}', "duplicate"),
        (b"", "empty"),
        (b"  \n ", "empty"),
        (b'{"a": 1} x', "invalid JSON"),
        (b'{"a": 1}{}', "invalid JSON"),
        (b"[1,]", "invalid JSON"),
        (b"{'a': 1}", "invalid JSON"),
        (b'{"a": "tab\there"}', "invalid JSON"),
        (b"1" * 5000, "number too long"),
    ],
)
def test_parse_json_refuses(raw: bytes, reason: str) -> None:
    with pytest.raises(BadPayload, match=reason):
        parse_json(raw)


def test_parse_json_refuses_very_deep_nesting() -> None:
    with pytest.raises(BadPayload, match="nested deeper"):
        parse_json(b"[" * 10000 + b"]" * 10000)
    with pytest.raises(BadPayload):
        parse_json(b'{"a":' * 10000 + b"1" + b"}" * 10000)


def test_parse_json_depth_limit_is_exact() -> None:
    parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(BadPayload, match="nested deeper"):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))


def test_parse_json_counts_only_real_nesting() -> None:
    # many brackets, but inside strings or side by side: shallow
    assert parse_json(json.dumps({"s": "[" * 500, "l": [[1]] * 100}).encode())["s"] == "[" * 500


def test_parse_json_allows_escaped_backslash_before_u_d800() -> None:
    assert parse_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}


# --------------------------------------------------------------------------- envelopes


def _envelope(**entry_overrides: Any) -> dict[str, Any]:
    entry = {"id": "1", "time": 1751247548,
             "changes": [{"field": "account_review_update", "value": {"decision": "APPROVED"}}]}
    entry.update(entry_overrides)
    return {"object": "whatsapp_business_account", "entry": [entry]}


def _raw(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_parse_envelopes_single_object() -> None:
    envelope = _envelope()
    assert parse_envelopes(_raw(envelope)) == [envelope]


def test_parse_envelopes_array_form() -> None:
    envelopes = [_envelope(), _envelope(id="2")]
    assert parse_envelopes(_raw(envelopes)) == envelopes


def test_parse_envelopes_allows_empty_entry_and_changes_and_unknown_keys() -> None:
    parse_envelopes(_raw({"object": "whatsapp_business_account", "entry": [], "extra": 1}))
    parse_envelopes(_raw(_envelope(changes=[], other={"x": 1})))
    env = _envelope()
    env["entry"][0]["changes"][0]["new_key"] = True
    parse_envelopes(_raw(env))


def test_parse_envelopes_time_is_optional() -> None:
    env = _envelope()
    del env["entry"][0]["time"]
    parse_envelopes(_raw(env))


def _without(env: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in env.items() if k != key}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "empty array"),
        ("str", "JSON object or a non-empty array"),
        (1, "JSON object or a non-empty array"),
        (None, "JSON object or a non-empty array"),
        ([1], r"\[0\] must be an object"),
        ([_envelope(), "x"], r"\[1\] must be an object"),
        (_without(_envelope(), "object"), "object is required"),
        ({**_envelope(), "object": "page"}, 'object must be "whatsapp_business_account"'),
        (_without(_envelope(), "entry"), "entry is required"),
        ({**_envelope(), "entry": {}}, "entry must be a list"),
        ({**_envelope(), "entry": [1]}, r"entry\[0\] must be an object"),
        (_envelope(id=102), r"entry\[0\].id must be a string"),
        (_envelope(time="1751247548"), r"entry\[0\].time must be a unix time"),
        (_envelope(time=True), r"entry\[0\].time must be a unix time"),
        (_envelope(time=1.5), r"entry\[0\].time must be a unix time"),
        (_envelope(time=-1), r"entry\[0\].time must be a unix time"),
        (_envelope(time=2**63), r"entry\[0\].time must be a unix time"),
        (_envelope(changes={}), r"entry\[0\].changes must be a list"),
        (_envelope(changes=[[]]), r"entry\[0\].changes\[0\] must be an object"),
        (_envelope(changes=[{"value": {}}]), r"entry\[0\].changes\[0\].field is required"),
        (_envelope(changes=[{"field": 1, "value": {}}]), r"changes\[0\].field must be a string"),
        (_envelope(changes=[{"field": "x"}]), r"changes\[0\].value is required"),
        (
            _envelope(changes=[{"field": "x", "value": {}}, {"field": "x", "value": []}]),
            r"entry\[0\].changes\[1\].value must be an object",
        ),
        ([_envelope(), _envelope(id=None)], r"\[1\].entry\[0\].id must be a string"),
    ],
)
def test_parse_envelopes_refuses_bad_shape(body: Any, message: str) -> None:
    with pytest.raises(BadPayload, match=message):
        parse_envelopes(_raw(body))


# --------------------------------------------------------------------------- field schemas

_META = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}
_MSG = {"from": "1650", "id": "wamid.A", "timestamp": "1749416383", "type": "text",
        "text": {"body": "hi"}}
_STATUS = {"id": "wamid.B", "status": "read", "timestamp": "1749416400", "recipient_id": "1650"}

VALID: dict[str, dict[str, Any]] = {
    "messages": {"metadata": _META, "contacts": [{"wa_id": "1650"}], "messages": [_MSG]},
    "account_review_update": {"decision": "APPROVED"},
    "account_update": {"event": "ACCOUNT_VIOLATION"},
    "business_capability_update": {"max_phone_numbers_per_waba": 2},
    "message_template_status_update": {"event": "APPROVED", "message_template_id": 1,
                                       "message_template_language": "en"},
    "phone_number_name_update": {"display_phone_number": "1555", "decision": "APPROVED"},
    "phone_number_quality_update": {"display_phone_number": "1555", "event": "UPGRADE"},
    "security": {"event": "PIN_CHANGED"},
    "template_category_update": {"message_template_id": 1, "new_category": "MARKETING"},
    "message_template_quality_update": {"message_template_id": 1, "new_quality_score": "RED"},
    "account_alerts": {"entity_type": "BUSINESS", "entity_id": "5", "alert_info": {}},
    "user_preferences": {"metadata": _META,
                         "user_preferences": [{"wa_id": "1650", "value": "stop"}]},
    "smb_message_echoes": {"metadata": _META, "message_echoes": [{"id": "wamid.C"}]},
    "flows": {"event": "FLOW_STATUS_CHANGE"},
}

BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("messages", {"metadata": _META, "messages": [{**_MSG, "id": 5}]},
     "messages[0].id must be a string"),
    ("messages", {"metadata": _META, "messages": [_MSG, _without(_MSG, "from")]},
     "messages[1].from is required"),
    ("messages", {"metadata": _META, "messages": [{**_MSG, "timestamp": 1749416383}]},
     "messages[0].timestamp must be a string of digits"),
    ("messages", {"metadata": _META, "messages": [{**_MSG, "timestamp": "17494x"}]},
     "messages[0].timestamp must be a string of digits"),
    ("messages", {"metadata": _META, "messages": [{**_MSG, "type": None}]},
     "messages[0].type must be a string"),
    ("messages", {"metadata": _META, "messages": {}}, "messages must be a list"),
    ("messages", {"metadata": _META, "messages": ["x"]}, "messages[0] must be an object"),
    ("messages", {"messages": [_MSG]}, "metadata is required"),
    ("messages", {"metadata": {"display_phone_number": "1"}, "messages": [_MSG]},
     "metadata.phone_number_id is required"),
    ("messages", {"metadata": {**_META, "phone_number_id": 1}, "messages": [_MSG]},
     "metadata.phone_number_id must be a string"),
    ("messages", {"metadata": _META}, "value needs one of: messages, statuses, errors"),
    ("messages", {"metadata": _META, "statuses": [_without(_STATUS, "status")]},
     "statuses[0].status is required"),
    ("messages", {"metadata": _META, "statuses": [{**_STATUS, "recipient_id": 1}]},
     "statuses[0].recipient_id must be a string"),
    ("messages", {"metadata": _META, "errors": [{"code": "130429"}]},
     "errors[0].code must be an integer"),
    ("messages", {"metadata": _META, "errors": [{"code": True}]},
     "errors[0].code must be an integer"),
    ("messages", {"metadata": _META, "contacts": [{"wa_id": 1}], "messages": [_MSG]},
     "contacts[0].wa_id must be a string"),
    ("account_review_update", {}, "decision is required"),
    ("account_update", {"event": 1}, "event must be a string"),
    ("business_capability_update", {"max_phone_numbers_per_waba": "2"},
     "max_phone_numbers_per_waba must be an integer"),
    ("message_template_status_update",
     {"event": "APPROVED", "message_template_id": "1", "message_template_language": "en"},
     "message_template_id must be an integer"),
    ("phone_number_name_update", {"display_phone_number": "1555"}, "decision is required"),
    ("phone_number_quality_update", {"event": "UPGRADE"}, "display_phone_number is required"),
    ("security", {"event": "PIN_CHANGED", "display_phone_number": 1},
     "display_phone_number must be a string"),
    ("template_category_update", {"message_template_id": True, "new_category": "X"},
     "message_template_id must be an integer"),
    ("message_template_quality_update", {"message_template_id": 1},
     "new_quality_score is required"),
    ("account_alerts", {"entity_type": "B", "entity_id": "5", "alert_info": "x"},
     "alert_info must be an object"),
    ("user_preferences", {"metadata": _META, "user_preferences": [{"wa_id": "1"}]},
     "user_preferences[0].value is required"),
    ("smb_message_echoes", {"metadata": _META, "message_echoes": [{"id": 1}]},
     "message_echoes[0].id must be a string"),
    ("flows", {}, "event is required"),
]


def test_every_known_field_has_a_valid_and_a_broken_case() -> None:
    assert set(VALID) == KNOWN_FIELDS
    assert {field for field, _, _ in BROKEN} == KNOWN_FIELDS


@pytest.mark.parametrize("field", sorted(VALID))
def test_valid_value_fits(field: str) -> None:
    assert check_change_value(field, VALID[field]) is None


@pytest.mark.parametrize("field", sorted(VALID))
def test_unknown_keys_inside_values_are_allowed(field: str) -> None:
    value = {**VALID[field], "brand_new_key": {"nested": [1]}}
    assert check_change_value(field, value) is None


@pytest.mark.parametrize(("field", "value", "reason"), BROKEN)
def test_broken_value_is_reported(field: str, value: dict[str, Any], reason: str) -> None:
    assert check_change_value(field, value) == reason


def test_messages_statuses_and_errors_alone_fit() -> None:
    assert check_change_value("messages", {"metadata": _META, "statuses": [_STATUS]}) is None
    assert check_change_value("messages", {"metadata": _META, "errors": [{"code": 1}]}) is None
    status = _without(_STATUS, "recipient_id")
    assert check_change_value("messages", {"metadata": _META, "statuses": [status]}) is None


def test_enums_are_open_strings() -> None:
    assert check_change_value("account_update", {"event": "SOMETHING_META_ADDED_LATER"}) is None
    assert check_change_value("messages", {"metadata": _META,
                                           "messages": [{**_MSG, "type": "hologram"}]}) is None


def test_unknown_field_is_never_rejected() -> None:
    assert "calls" not in KNOWN_FIELDS
    assert check_change_value("calls", {"anything": ["goes"]}) is None
