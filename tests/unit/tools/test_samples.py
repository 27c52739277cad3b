"""Guards the sample deliveries: each parses, fits its schema and normalizes."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from sidecar.checks.payload import KNOWN_FIELDS, check_change_value, parse_envelopes
from sidecar.normalize import normalize
from sidecar.tools.samples import (
    META_DOC_EXAMPLE,
    SAMPLE_FIELDS,
    sample_delivery,
    sample_status_delivery,
)

RECEIVED = datetime(2026, 11, 24, 10, 15, tzinfo=timezone.utc)


def _event_ids(envelope: object) -> list[str]:
    envelopes = parse_envelopes(json.dumps(envelope).encode())
    result = normalize(envelopes, received_at=RECEIVED)
    assert result.quarantined == []
    return [e.id for e in result.events]


def test_sample_fields_are_the_known_fields() -> None:
    assert set(SAMPLE_FIELDS) == KNOWN_FIELDS
    assert len(SAMPLE_FIELDS) == len(KNOWN_FIELDS)
    assert SAMPLE_FIELDS[0] == "messages"


@pytest.mark.parametrize("field", SAMPLE_FIELDS)
def test_sample_parses_and_fits_its_schema(field: str) -> None:
    (envelope,) = parse_envelopes(json.dumps(sample_delivery(field)).encode())
    changes = [c for entry in envelope["entry"] for c in entry["changes"]]
    assert [c["field"] for c in changes] == [field]
    for change in changes:
        assert check_change_value(change["field"], change["value"]) is None
    assert len(_event_ids(envelope)) >= 1


def test_status_sample_parses_and_fits() -> None:
    envelope = sample_status_delivery()
    (change,) = envelope["entry"][0]["changes"]
    assert change["field"] == "messages" and change["value"]["statuses"]
    assert check_change_value("messages", change["value"]) is None
    events = normalize(parse_envelopes(json.dumps(envelope).encode()), received_at=RECEIVED).events
    assert [e.type for e in events] == ["whatsapp.status"]


def test_messages_sample_has_contacts_and_messages() -> None:
    value = sample_delivery("messages")["entry"][0]["changes"][0]["value"]
    assert value["contacts"] and value["messages"]
    events = normalize([sample_delivery("messages")], received_at=RECEIVED).events
    assert events[0].data["contact"] == value["contacts"][0]


def test_meta_doc_example_is_the_array_of_one_name_update_for_entry_0() -> None:
    assert isinstance(META_DOC_EXAMPLE, list) and len(META_DOC_EXAMPLE) == 1
    (entry,) = META_DOC_EXAMPLE[0]["entry"]
    assert entry["id"] == "0"
    envelopes = parse_envelopes(json.dumps(META_DOC_EXAMPLE).encode())
    (event,) = normalize(envelopes, received_at=RECEIVED).events
    assert event.type == "whatsapp.phone_number_name_update" and event.waba_id == "0"
    assert event.data["decision"] == "APPROVED" and event.data["rejection_reason"] is None


@pytest.mark.parametrize("field", ["calls", "message_echoes", "smb_message_echoes"])
def test_split_samples_become_their_element_events(field: str) -> None:
    kind = {"calls": "whatsapp.call"}.get(field, "whatsapp.message_echo")
    events = normalize([sample_delivery(field)], received_at=RECEIVED).events
    assert [e.type for e in events] == [kind]
    assert events[0].data["metadata"]["phone_number_id"] == events[0].phone_number_id


def test_each_call_returns_a_fresh_copy() -> None:
    first = sample_delivery("flows")
    first["entry"][0]["changes"][0]["value"]["event"] = "CHANGED"
    assert sample_delivery("flows")["entry"][0]["changes"][0]["value"]["event"] != "CHANGED"
    assert sample_status_delivery() is not sample_status_delivery()


@pytest.mark.parametrize("field", SAMPLE_FIELDS)
def test_unique_token_changes_event_ids(field: str) -> None:
    plain = _event_ids(sample_delivery(field))
    one = _event_ids(sample_delivery(field, unique="run-1"))
    two = _event_ids(sample_delivery(field, unique="run-2"))
    assert set(plain).isdisjoint(one) and set(one).isdisjoint(two)
    assert _event_ids(sample_delivery(field, unique="run-1")) == one


def test_unique_token_changes_status_ids() -> None:
    assert _event_ids(sample_status_delivery(unique="a")) != _event_ids(sample_status_delivery())


def test_unknown_field_is_a_value_error_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="account_update") as info:
        sample_delivery("nope")
    assert not isinstance(info.value, KeyError)
