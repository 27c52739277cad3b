"""Unit tests for sidecar.normalize: splitting, ids, quarantine, timestamps, no mutation."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import pytest

from sidecar.errors import BadPayload
from sidecar.events import QuarantinedChange, content_event_id, message_event_id, status_event_id
from sidecar.normalize import Normalized, normalize, normalize_change

RECEIVED = datetime(2026, 11, 24, 10, 15, 0, 412000, tzinfo=timezone.utc)
META = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}
WABA = "102290129340398"


def envelope(*changes: tuple[str, dict[str, Any]], time: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": WABA,
                             "changes": [{"field": f, "value": v} for f, v in changes]}
    if time is not None:
        entry["time"] = time
    return {"object": "whatsapp_business_account", "entry": [entry]}


def message(wamid: str, sender: str, ts: str = "1749416383") -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": ts, "type": "text", "text": {"body": "hi"}}


def run(*envelopes: dict[str, Any], **kwargs: Any) -> Normalized:
    return normalize(list(envelopes), received_at=RECEIVED, **kwargs)


def test_messages_change_is_split_with_contact_and_metadata() -> None:
    contacts = [{"profile": {"name": "A"}, "wa_id": "111"},
                {"profile": {"name": "B"}, "wa_id": "222"}]
    value = {"messaging_product": "whatsapp", "metadata": META, "contacts": contacts,
             "messages": [message("wamid.1", "222"), message("wamid.2", "111"),
                          message("wamid.3", "333")]}
    events = run(envelope(("messages", value))).events
    assert [e.type for e in events] == ["whatsapp.message"] * 3
    assert [e.id for e in events] == [message_event_id(f"wamid.{i}") for i in (1, 2, 3)]
    assert [e.data["contact"] for e in events] == [contacts[1], contacts[0], None]
    first = events[0]
    assert first.data == {**message("wamid.1", "222"), "metadata": META, "contact": contacts[1]}
    assert first.field == "messages"
    assert first.waba_id == WABA
    assert first.phone_number_id == "106540352242922"
    assert first.occurred_at == "2025-06-08T20:59:43Z"
    assert first.received_at == "2026-11-24T10:15:00.412Z"


def test_single_contact_is_used_when_wa_id_does_not_match() -> None:
    # e.g. ``from`` replaced by a BSUID
    contact = {"profile": {"name": "A"}, "wa_id": "111", "user_id": "US.1"}
    value = {"metadata": META, "contacts": [contact], "messages": [message("wamid.1", "US.1")]}
    (event,) = run(envelope(("messages", value))).events
    assert event.data["contact"] == contact


def test_message_without_contacts_has_null_contact() -> None:
    value = {"metadata": META, "messages": [message("wamid.1", "111")]}
    (event,) = run(envelope(("messages", value))).events
    assert event.data["contact"] is None


def test_statuses_and_errors_are_split() -> None:
    statuses = [{"id": "wamid.X", "status": "sent", "timestamp": "1698266945", "recipient_id": "9"},
                {"id": "wamid.X", "status": "delivered", "timestamp": "1698266950",
                 "recipient_id": "9"}]
    errors = [{"code": 130429, "title": "Rate limit hit"}]
    value = {"metadata": META, "statuses": statuses, "errors": errors}
    events = run(envelope(("messages", value), time=1751247548)).events
    assert [e.type for e in events] == ["whatsapp.status", "whatsapp.status", "whatsapp.error"]
    assert events[0].id == status_event_id("wamid.X", "sent", "1698266945")
    assert events[1].id == status_event_id("wamid.X", "delivered", "1698266950")
    assert events[0].id != events[1].id
    assert events[0].data == {**statuses[0], "metadata": META}
    assert "contact" not in events[0].data
    assert events[2].id == content_event_id(WABA, "messages", 1751247548,
                                            {"metadata": META, "error": errors[0]})
    assert events[2].data == {**errors[0], "metadata": META}
    assert events[2].occurred_at == "2025-06-30T01:39:08Z"  # no element timestamp: entry time
    assert all(e.phone_number_id == "106540352242922" and e.field == "messages" for e in events)


def test_other_field_is_one_event_with_value_unmodified() -> None:
    value = {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"},
             "brand_new_key": [1, {"x": None}]}
    (event,) = run(envelope(("account_update", value), time=1743451903)).events
    assert event.type == "whatsapp.account_update"
    assert event.field == "account_update"
    assert event.id == content_event_id(WABA, "account_update", 1743451903, value)
    assert event.data == value
    assert event.phone_number_id is None
    assert event.occurred_at == "2025-03-31T20:11:43Z"


def test_unknown_keys_are_kept_in_messages() -> None:
    msg = {**message("wamid.1", "111"), "from_user_id": "US.1", "future": {"a": 1}}
    value = {"messaging_product": "whatsapp", "metadata": {**META, "extra": 1},
             "messages": [msg], "new_top": True}
    event, rest = run(envelope(("messages", value), time=7)).events
    assert event.data["from_user_id"] == "US.1"
    assert event.data["future"] == {"a": 1}
    assert event.data["metadata"]["extra"] == 1
    # A key beside the arrays is forwarded too, in an event of its own.
    assert rest.type == "whatsapp.messages" and rest.field == "messages"
    assert rest.data == {"new_top": True, "metadata": value["metadata"]}
    assert rest.id == content_event_id(WABA, "messages", 7, rest.data)


def test_phone_number_id_for_user_preferences_and_echoes() -> None:
    prefs = {"metadata": META, "user_preferences": [{"wa_id": "1", "value": "stop"}]}
    echoes = {"metadata": META, "message_echoes": [{"id": "wamid.E"}]}
    events = run(envelope(("user_preferences", prefs), ("smb_message_echoes", echoes))).events
    assert [e.phone_number_id for e in events] == ["106540352242922"] * 2
    assert [e.type for e in events] == ["whatsapp.user_preferences", "whatsapp.message_echo"]


def test_unknown_field_is_forwarded_by_default() -> None:
    value = {"metadata": META, "calls": [{"id": "c1"}]}
    (event,) = run(envelope(("brand_new", value), time=1751247548)).events
    assert event.type == "whatsapp.brand_new"
    assert event.field == "brand_new"
    assert event.data == value
    assert event.id == content_event_id(WABA, "brand_new", 1751247548, value)
    assert event.phone_number_id == "106540352242922"


def test_unknown_field_can_be_dropped() -> None:
    result = run(envelope(("brand_new", {"x": 1}), ("flows", {"event": "E"})),
                 unknown_fields="drop")
    assert [e.type for e in result.events] == ["whatsapp.flows"]
    assert result.quarantined == []


def test_bad_unknown_fields_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        run(envelope(), unknown_fields="keep")


def test_broken_known_change_is_quarantined_and_others_still_flow() -> None:
    broken = {"metadata": META, "messages": [{"from": "1", "timestamp": "1", "type": "text"}]}
    good = {"decision": "APPROVED"}
    result = run(envelope(("messages", broken), ("account_review_update", good), time=17))
    assert [e.type for e in result.events] == ["whatsapp.account_review_update"]
    assert result.quarantined == [
        QuarantinedChange(id=content_event_id(WABA, "messages", 17, broken), waba_id=WABA,
                          field="messages", entry_time=17, reason="messages[0].id is required",
                          value=broken)
    ]
    assert result.quarantined[0].value is broken


def test_events_keep_envelope_entry_and_change_order() -> None:
    first = envelope(("flows", {"event": "A"}), ("flows", {"event": "B"}))
    second = envelope(("security", {"event": "PIN_CHANGED"}))
    second["entry"][0]["id"] = "other"
    events = run(first, second).events
    assert [(e.waba_id, e.data["event"]) for e in events] == [
        (WABA, "A"), (WABA, "B"), ("other", "PIN_CHANGED")]


def test_ids_are_deterministic() -> None:
    value = {"metadata": META, "contacts": [{"wa_id": "1"}], "messages": [message("wamid.1", "1")],
             "statuses": [{"id": "wamid.S", "status": "read", "timestamp": "5"}],
             "errors": [{"code": 1}]}
    body = envelope(("messages", value), ("flows", {"event": "E"}), time=99)
    later = datetime(2030, 1, 1, tzinfo=timezone.utc)
    first = [e.id for e in run(body).events]
    again = [e.id for e in normalize([copy.deepcopy(body)], received_at=later).events]
    assert first == again
    assert len(set(first)) == len(first) == 4


def test_content_id_ignores_key_order() -> None:
    a = run(envelope(("flows", {"event": "E", "flow_id": "1"}), time=5)).events[0].id
    b = run(envelope(("flows", {"flow_id": "1", "event": "E"}), time=5)).events[0].id
    assert a == b


def test_entry_time_is_part_of_content_id() -> None:
    a = run(envelope(("flows", {"event": "E"}), time=5)).events[0].id
    b = run(envelope(("flows", {"event": "E"}), time=6)).events[0].id
    c = run(envelope(("flows", {"event": "E"}))).events[0].id
    assert len({a, b, c}) == 3


@pytest.mark.parametrize(
    ("element_ts", "entry_time", "expected"),
    [
        ("1749416383", 1751247548, "2025-06-08T20:59:43Z"),  # element timestamp wins
        (None, 1751247548, "2025-06-30T01:39:08Z"),  # else entry time
        (None, None, "2026-11-24T10:15:00Z"),  # else received_at, without millis
    ],
)
def test_occurred_at_fallbacks_for_messages(element_ts: str | None, entry_time: int | None,
                                            expected: str) -> None:
    status: dict[str, Any] = {"id": "w", "status": "read", "timestamp": "1749416383"}
    value: dict[str, Any] = {"metadata": META, "statuses": [status]} if element_ts else {
        "metadata": META, "errors": [{"code": 1}]}
    (event,) = run(envelope(("messages", value), time=entry_time)).events
    assert event.occurred_at == expected


@pytest.mark.parametrize(
    ("value_ts", "expected"),
    [
        (1749416383, "2025-06-08T20:59:43Z"),
        ("1749416383", "2025-06-08T20:59:43Z"),
        ("not-a-time", "2025-06-30T01:39:08Z"),
        (10**20, "2025-06-30T01:39:08Z"),
        (-5, "2025-06-30T01:39:08Z"),
        (True, "2025-06-30T01:39:08Z"),
        ("9" * 5000, "2025-06-30T01:39:08Z"),
    ],
)
def test_occurred_at_from_value_timestamp(value_ts: Any, expected: str) -> None:
    value = {"event": "E", "timestamp": value_ts}
    (event,) = run(envelope(("flows", value), time=1751247548)).events
    assert event.occurred_at == expected


def test_out_of_range_entry_time_falls_back_to_received_at() -> None:
    (event,) = run(envelope(("flows", {"event": "E"}), time=10**30)).events
    assert event.occurred_at == "2026-11-24T10:15:00Z"


def test_input_is_not_mutated() -> None:
    value = {"metadata": META, "contacts": [{"wa_id": "1"}],
             "messages": [message("wamid.1", "1")],
             "statuses": [{"id": "wamid.S", "status": "read", "timestamp": "5"}],
             "errors": [{"code": 1}]}
    body = envelope(("messages", value), ("flows", {"event": "E"}), ("calls", {"x": 1}),
                    ("flows", {}), time=9)
    before = copy.deepcopy(body)
    run(body)
    assert body == before


def test_normalize_change_replays_a_quarantined_value() -> None:
    value = {"metadata": META, "messages": [message("wamid.1", "1")]}
    events = normalize_change(WABA, None, "messages", value, received_at=RECEIVED)
    assert events == run(envelope(("messages", value))).events


def test_normalize_change_forwards_unknown_fields() -> None:
    (event,) = normalize_change(WABA, 3, "brand_new", {"x": 1}, received_at=RECEIVED)
    assert event.type == "whatsapp.brand_new"


def test_normalize_change_refuses_a_value_still_broken() -> None:
    with pytest.raises(BadPayload, match=r"messages: messages\[0\].id is required"):
        normalize_change(WABA, None, "messages",
                         {"metadata": META, "messages": [{"from": "1", "timestamp": "1",
                                                          "type": "text"}]},
                         received_at=RECEIVED)


def test_event_round_trips_through_dict() -> None:
    from sidecar.events import Event

    (event,) = run(envelope(("flows", {"event": "E"}), time=5)).events
    assert Event.from_dict(event.to_dict()) == event
