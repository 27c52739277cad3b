"""Every shape Meta sends today becomes events: our own fixtures (tests/data/shapes/, one
body per shape, written for these tests in Meta's shape) through the real parser and
normalizer, and the id and contact rules each shape exercises."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from sidecar.checks.payload import parse_envelopes
from sidecar.checks.schemas import SPLIT_ARRAYS
from sidecar.events import (
    Event,
    call_event_id,
    content_event_id,
    echo_event_id,
    message_event_id,
    status_event_id,
)
from sidecar.normalize import SPLIT_FIELDS, Bounds, normalize
from sidecar.spool.parts import measure

SHAPES = Path(__file__).resolve().parents[1] / "data" / "shapes"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SHAPES / "expected.json").read_text("utf-8"))
RECEIVED = datetime(2026, 12, 1, 9, 0, 0, 250000, tzinfo=timezone.utc)


def _events(name: str) -> list[Event]:
    raw = (SHAPES / name).read_bytes()
    bounds = Bounds(max_events=1000, body_bytes=len(raw), measure=measure)
    result = normalize(parse_envelopes(raw), received_at=RECEIVED, bounds=bounds)
    assert result.quarantined == [], [q.reason for q in result.quarantined]
    return result.events


def _body(name: str) -> Any:
    return json.loads((SHAPES / name).read_text("utf-8"))


def _elements(body: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event type, element) for every element a split change carries."""
    found = []
    for envelope in body if isinstance(body, list) else [body]:
        for entry in envelope["entry"]:
            for change in entry["changes"]:
                if change["field"] in SPLIT_FIELDS:
                    for key, (kind, _) in SPLIT_ARRAYS.items():
                        found += [(kind, e) for e in change["value"].get(key, [])]
    return found


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in SHAPES.glob("*.json")
                                      if p.name != "expected.json")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shape_becomes_its_events_with_every_key_kept(name: str) -> None:
    events = _events(name)
    assert [e.type for e in events] == EXPECTED[name]["types"], EXPECTED[name]["shape"]
    split = [e for e in events if e.field in SPLIT_FIELDS]
    for (kind, element), event in zip(_elements(_body(name)), split, strict=True):
        assert event.type == kind
        assert {k: v for k, v in event.data.items() if k in element} == element
        assert set(event.data) - set(element) <= {"metadata", "contact"}
    again = normalize(parse_envelopes((SHAPES / name).read_bytes()),
                      received_at=datetime(2031, 1, 1, tzinfo=timezone.utc)).events
    assert [e.id for e in again] == [e.id for e in events]  # ids from content only


def test_message_without_from_gets_its_contact_by_user_id() -> None:
    (event,) = _events("bsuid_message_without_from.json")
    assert "from" not in event.data
    assert event.data["contact"]["user_id"] == event.data["from_user_id"]
    assert event.id == message_event_id(event.data["id"])


def test_empty_from_and_wa_id_never_match_each_other() -> None:
    (event,) = _events("bsuid_message_empty_from.json")
    assert event.data["from"] == ""
    assert event.data["contact"]["profile"]["name"] == "Rui Costa"  # by user_id, not by ""


def test_status_with_contacts_carries_its_recipients_contact() -> None:
    (event,) = _events("bsuid_status_recipient_user_id.json")
    assert event.data["recipient_id"] == ""
    assert event.data["contact"]["user_id"] == event.data["recipient_user_id"]


def test_status_without_contacts_has_no_contact_key() -> None:
    (event,) = _events("group_status_jid.json")
    assert "contact" not in event.data
    assert event.data["recipient_id"].endswith("@g.us")


def test_system_message_without_contacts() -> None:
    (event,) = _events("bsuid_system_user_changed_user_id.json")
    assert event.data["system"]["type"] == "user_changed_user_id"
    assert event.data["contact"] is None


def test_status_timestamp_as_integer_or_string_gives_one_id() -> None:
    (as_int,) = _events("status_pricing_pmp.json")
    assert as_int.data["timestamp"] == 1775006600
    assert as_int.id == status_event_id(as_int.data["id"], "read", "1775006600")
    assert status_event_id("wamid.A", "sent", 1700000000) == \
        status_event_id("wamid.A", "sent", "1700000000")


def test_group_statuses_are_one_event_per_participant_with_its_contact() -> None:
    # Two members read a group message in the same second: two statuses of one wamid,
    # status and timestamp, both addressed to the group.  Each is its own event (one id
    # per participant) and carries its member's contact, not the group's (none).
    pablo, ana = _events("group_status_participants.json")
    assert pablo.data["recipient_id"] == ana.data["recipient_id"]  # the group
    assert pablo.id != ana.id
    assert pablo.id == status_event_id(pablo.data["id"], "read", "1764321000",
                                       "US.13491208655302741918")
    assert pablo.data["contact"]["profile"]["name"] == "Pablo M."
    assert ana.data["contact"]["profile"]["name"] == "Ana R."  # by user id only
    # A status without a participant keeps the id it always had.
    assert status_event_id("wamid.A", "read", "1") == status_event_id("wamid.A", "read", "1",
                                                                       None)


def test_a_group_status_participant_that_is_not_a_string_is_quarantined() -> None:
    # Else it could not enter the id, and one member's receipt would hide the other's.
    body = _body("group_status_participants.json")
    for status, participant in zip(body["entry"][0]["changes"][0]["value"]["statuses"],
                                   (1001, 1002)):
        status["recipient_participant_user_id"] = participant
    result = normalize(parse_envelopes(json.dumps(body).encode()), received_at=RECEIVED)
    assert result.events == [] and len(result.quarantined) == 1
    assert "recipient_participant_user_id" in result.quarantined[0].reason


def test_an_error_beside_a_users_contact_carries_it_and_is_that_users() -> None:
    (error,) = _events("errors_with_contact.json")
    assert error.data["contact"]["wa_id"] == "16315551181"
    # The same error about another user is another event, not a repeat of this one.
    body = _body("errors_with_contact.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"] = [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}]
    (other,) = normalize(parse_envelopes(json.dumps(body).encode()),
                         received_at=RECEIVED).events
    assert other.id != error.id and other.data["contact"]["wa_id"] == "16505551234"
    # Without contacts (none, or an empty list), an error's id and data are what they
    # always were.
    for no_contacts in (None, []):
        if no_contacts is None:
            value.pop("contacts", None)
        else:
            value["contacts"] = no_contacts
        (bare,) = normalize(parse_envelopes(json.dumps(body).encode()),
                            received_at=RECEIVED).events
        assert "contact" not in bare.data
        assert bare.id == content_event_id("102290129340398", "messages", None,
                                           {"metadata": value["metadata"],
                                            "error": value["errors"][0]})


def test_message_integer_timestamp_sets_occurred_at() -> None:
    (event,) = _events("message_integer_timestamp.json")
    assert event.occurred_at == "2026-04-01T01:13:20Z"


def test_call_ids_come_from_call_id_event_status_and_timestamp() -> None:
    (connect,) = _events("calls_connect.json")
    call, error = _events("calls_terminate_with_errors.json")
    assert connect.id == call_event_id(connect.data["id"], "connect", None, "1775003000")
    assert call.id == call_event_id(call.data["id"], "terminate", "FAILED", "1775003120")
    assert connect.id != call.id and connect.field == call.field == "calls"
    assert connect.data["contact"]["wa_id"] == connect.data["from"]
    assert call.data["contact"] is None
    assert error.id == content_event_id(call.waba_id, "calls", None,
                                        {"metadata": error.data["metadata"],
                                         "error": {k: v for k, v in error.data.items()
                                                   if k != "metadata"}})


def test_call_without_id_gets_a_content_id() -> None:
    value = {"metadata": {"phone_number_id": "1"}, "calls": [{"wacid": "wacid.X", "event": "c"}]}
    body = {"object": "whatsapp_business_account",
            "entry": [{"id": "w", "changes": [{"field": "messages", "value": value}]}]}
    (event,) = normalize([body], received_at=RECEIVED).events
    assert event.type == "whatsapp.call"
    assert event.id == content_event_id("w", "messages", None,
                                        {"metadata": value["metadata"], "call": value["calls"][0]})


def test_call_status_is_a_status_of_the_calls_field() -> None:
    (event,) = _events("calls_status_ringing.json")
    assert (event.type, event.field, event.data["type"]) == ("whatsapp.status", "calls", "call")
    assert event.id == status_event_id(event.data["id"], "RINGING", "1775003005")


def test_echo_ids_come_from_the_echo_message_id() -> None:
    (agent,) = _events("message_echoes.json")
    image, revoke = _events("smb_message_echoes.json")
    assert agent.id == echo_event_id(agent.data["id"])
    assert agent.id != message_event_id(agent.data["id"])
    assert [image.field, revoke.field] == ["smb_message_echoes"] * 2
    assert image.data["contact"]["wa_id"] == image.data["to"]  # the user is the recipient


def test_the_same_message_twice_in_one_body_has_one_id() -> None:
    first, second, update = _events("several_entries_and_changes.json")
    assert first.id == second.id
    assert update.waba_id == "WABA_PLACEHOLDER_ID"


def test_events_of_one_change_share_metadata_and_contact_objects() -> None:
    # Not copies: the spool stores each shared object once (spool.parts).
    first, second = _events("location_coordinates_number_and_string.json")
    assert first.data["metadata"] is second.data["metadata"]
    assert first.data["contact"] is second.data["contact"]


def test_group_fields_are_one_event_each_with_the_value_unmodified() -> None:
    for field in ("group_lifecycle_update", "group_participants_update",
                  "group_settings_update", "group_status_update"):
        body = _body(f"{field}.json")
        (event,) = _events(f"{field}.json")
        assert event.data == body["entry"][0]["changes"][0]["value"]
        assert event.phone_number_id == "112233445566778"


def test_input_bodies_are_not_mutated() -> None:
    for name in EXPECTED:
        body = _body(name)
        before = copy.deepcopy(body)
        normalize(body if isinstance(body, list) else [body], received_at=RECEIVED)
        assert body == before
