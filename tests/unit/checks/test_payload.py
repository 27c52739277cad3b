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
    "calls": {"metadata": _META, "calls": [{"id": "wacid.A", "event": "connect"}]},
    "message_echoes": {"metadata": _META, "message_echoes": [{"id": "wamid.E"}]},
    "smb_message_echoes": {"metadata": _META, "message_echoes": [{"id": "wamid.C"}]},
    "account_alerts": {"entity_type": "BUSINESS", "entity_id": "5", "alert_info": {}},
    "account_review_update": {"decision": "APPROVED"},
    "account_settings_update": {"type": "phone_number_settings", "timestamp": 1749416383},
    "account_update": {"event": "ACCOUNT_VIOLATION"},
    "automatic_events": {"metadata": _META, "automatic_events": [{"event_name": "Purchase"}]},
    "business_capability_update": {"max_phone_numbers_per_waba": 2},
    "business_username_update": {"decision": "APPROVED", "requested_username": "shop"},
    "consumer_profile": {"metadata": _META, "contacts": [{"wa_id": "1650"}]},
    "flows": {"event": "FLOW_STATUS_CHANGE"},
    "group_lifecycle_update": {"metadata": _META, "groups": [{"type": "group_create"}]},
    "group_participants_update": {"groups": [{"type": "group_participants_add"}]},
    "group_settings_update": {"groups": [{"group_id": "G", "timestamp": "TIMESTAMP"}]},
    "group_status_update": {"groups": [{"type": "group_suspend"}]},
    "history": {"metadata": _META, "history": [{"threads": [{"id": "1650", "messages": []}]}]},
    "message_template_components_update": {"message_template_id": 1,
                                           "message_template_buttons": [{"x": 1}]},
    "message_template_quality_update": {"message_template_id": 1, "new_quality_score": "RED"},
    "message_template_status_update": {"event": "APPROVED", "message_template_id": 1,
                                       "message_template_language": "en", "reason": None},
    "messaging_handovers": {"metadata": _META},
    "partner_solutions": {"event": "SOLUTION_CREATED", "solution_id": 5},
    "payment_configuration_update": {"configuration_name": "c", "status": "Needs Testing"},
    "phone_number_name_update": {"display_phone_number": "1555", "decision": "APPROVED",
                                 "rejection_reason": None},
    "phone_number_quality_update": {"display_phone_number": "1555", "event": "UPGRADE"},
    "phone_number_username_update": {"decision": "REJECTED", "rejection_reasons": ["x"]},
    "security": {"event": "PIN_CHANGED"},
    "smb_app_state_sync": {"metadata": _META, "state_sync": [{"type": "contact"}]},
    "standby": {"metadata": _META, "messages": [{"id": "wamid.S"}]},
    "template_category_update": {"message_template_id": "1", "new_category": "MARKETING"},
    "user_preferences": {"metadata": _META,
                         "user_preferences": [{"user_id": "US.1", "value": "stop"}]},
}

BROKEN: list[tuple[str, dict[str, Any], str]] = [
    # what ids are derived from
    ("messages", {"metadata": _META, "messages": [_without(_MSG, "id")]},
     "messages[0].id is required"),
    ("messages", {"metadata": _META, "messages": [{**_MSG, "id": 5}]},
     "messages[0].id must be a non-empty string"),
    ("messages", {"metadata": _META, "messages": [{**_MSG, "id": ""}]},
     "messages[0].id must be a non-empty string"),
    ("messages", {"metadata": _META, "statuses": [_without(_STATUS, "status")]},
     "statuses[0].status is required"),
    ("messages", {"metadata": _META, "statuses": [_without(_STATUS, "id")]},
     "statuses[0].id is required"),
    ("messages", {"metadata": _META, "messages": {}}, "messages must be a list"),
    ("messages", {"metadata": _META, "messages": ["x"]}, "messages[0] must be an object"),
    ("messages", {"metadata": _META}, "value needs one of: messages, statuses, calls, message_echoes, "
     "errors"),
    # what contacts are matched on, when present
    ("messages", {"metadata": _META, "messages": [{**_MSG, "from": 1650}]},
     "messages[0].from must be a string"),
    ("messages", {"metadata": _META, "contacts": [{"wa_id": 1}], "messages": [_MSG]},
     "contacts[0].wa_id must be a string"),
    ("messages", {"metadata": _META, "statuses": [{**_STATUS, "recipient_id": 1}]},
     "statuses[0].recipient_id must be a string"),
    ("messages", {"metadata": "x", "messages": [_MSG]}, "metadata must be an object"),
    ("messages", {"metadata": _META, "errors": [{"code": True}]},
     "errors[0].code must be a string or an integer"),
    ("messages", {"metadata": _META, "messages": [{**_MSG, "timestamp": 1.5}]},
     "messages[0].timestamp must be a string or an integer"),
    ("calls", {"metadata": _META, "calls": [{"id": 7}]}, "calls[0].id must be a string"),
    ("calls", {"metadata": _META, "calls": "x"}, "calls must be a list"),
    ("message_echoes", {"metadata": _META, "message_echoes": [{"to": "1"}]},
     "message_echoes[0].id is required"),
    ("smb_message_echoes", {"metadata": _META, "message_echoes": [{"id": 1}]},
     "message_echoes[0].id must be a non-empty string"),
    # keys consumers route on, when present
    ("account_alerts", {"entity_type": "B", "entity_id": "5", "alert_info": "x"},
     "alert_info must be an object"),
    ("account_review_update", {"decision": 1}, "decision must be a string"),
    ("account_settings_update", {"type": ["x"]}, "type must be a string"),
    ("account_update", {"event": 1}, "event must be a string"),
    ("automatic_events", {"automatic_events": {"id": "x"}}, "automatic_events must be a list"),
    ("business_capability_update", {"max_phone_numbers_per_waba": 2.5},
     "max_phone_numbers_per_waba must be a string or an integer"),
    ("business_username_update", {"decision": None}, "decision must be a string"),
    ("consumer_profile", {"contacts": ["x"]}, "contacts[0] must be an object"),
    ("flows", {"event": {}}, "event must be a string"),
    ("group_lifecycle_update", {"groups": [1]}, "groups[0] must be an object"),
    ("group_participants_update", {"groups": {}}, "groups must be a list"),
    ("group_settings_update", {"groups": [{"group_id": 5}]},
     "groups[0].group_id must be a string"),
    ("group_status_update", {"groups": [{"type": True}]}, "groups[0].type must be a string"),
    ("history", {"history": [{"threads": "x"}]}, "history[0].threads must be a list"),
    ("message_template_components_update", {"message_template_id": [1]},
     "message_template_id must be a string or an integer"),
    ("message_template_quality_update", {"new_quality_score": 3},
     "new_quality_score must be a string"),
    ("message_template_status_update",
     {"event": "APPROVED", "message_template_id": True, "message_template_language": "en"},
     "message_template_id must be a string or an integer"),
    ("messaging_handovers", {"metadata": []}, "metadata must be an object"),
    ("partner_solutions", {"event": 5}, "event must be a string"),
    ("payment_configuration_update", {"status": 1}, "status must be a string"),
    ("phone_number_name_update", {"decision": ["APPROVED"]}, "decision must be a string"),
    ("phone_number_quality_update", {"event": 1}, "event must be a string"),
    ("phone_number_username_update", {"requested_username": 5},
     "requested_username must be a string"),
    ("security", {"event": "PIN_CHANGED", "display_phone_number": 1},
     "display_phone_number must be a string"),
    ("smb_app_state_sync", {"state_sync": [{"action": 1}]}, "state_sync[0].action must be a string"),
    ("standby", {"messages": "x"}, "messages must be a list"),
    ("template_category_update", {"message_template_id": True, "new_category": "X"},
     "message_template_id must be a string or an integer"),
    ("user_preferences", {"metadata": _META, "user_preferences": [{"wa_id": 1}]},
     "user_preferences[0].wa_id must be a string"),
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


@pytest.mark.parametrize("message", [
    _without(_MSG, "from"),  # business-scoped user id instead of a phone number
    {**_without(_MSG, "from"), "from_user_id": "US.13491208655302741918"},
    {**_MSG, "from": "", "from_user_id": "US.1", "from_parent_user_id": "US.ENT.1"},
    _without(_MSG, "type"),
    {**_MSG, "timestamp": 1749416383},
    _without(_MSG, "timestamp"),
    {**_MSG, "type": None, "group_id": "Y2FwaV9ncm91cDox"},
    {"id": "wamid.only"},
])
def test_messages_meta_sends_fit(message: dict[str, Any]) -> None:
    assert check_change_value("messages", {"metadata": _META, "messages": [message]}) is None


@pytest.mark.parametrize("status", [
    {**_STATUS, "timestamp": 1749416400},
    {**_STATUS, "recipient_id": "", "recipient_user_id": "US.1"},
    {**_STATUS, "recipient_id": "120363043000000000@g.us", "recipient_type": "group",
     "recipient_participant_id": "16505551234"},
    {**_STATUS, "status": "sent", "errors": [{"code": 131049, "title": "t"}]},
    {**_STATUS, "pricing": {"billable": True, "pricing_model": "PMP", "type": "regular",
                            "category": "marketing_lite"}},
    {"id": "wamid.S", "status": "played"},
])
def test_statuses_meta_sends_fit(status: dict[str, Any]) -> None:
    value = {"metadata": _META, "contacts": [{"user_id": "US.1", "wa_id": ""}],
             "statuses": [status]}
    assert check_change_value("messages", value) is None


def test_values_without_metadata_and_with_nulls_fit() -> None:
    assert check_change_value("messages", {"messages": [_MSG]}) is None
    assert check_change_value("messages", {"metadata": None, "messages": [_MSG]}) is None
    assert check_change_value("messages", {"metadata": {"phone_number_id": 106540352242922},
                                           "messages": [_MSG]}) is None
    assert check_change_value("user_preferences", {"user_preferences": []}) is None


def test_enums_are_open_strings() -> None:
    assert check_change_value("account_update", {"event": "SOMETHING_META_ADDED_LATER"}) is None
    assert check_change_value("messages", {"metadata": _META,
                                           "messages": [{**_MSG, "type": "hologram"}]}) is None


def test_unknown_field_is_never_rejected() -> None:
    assert "field_meta_adds_next_year" not in KNOWN_FIELDS
    assert check_change_value("field_meta_adds_next_year", {"anything": ["goes"]}) is None
