"""Checked envelopes → the events the upstream receives, plus quarantined changes.

Pure on purpose: the webhook route, the spool's replay and the tests all call the same
code, and the same delivery always yields the same events with the same ids, whichever
instance computes them (SPEC §5).  A known field whose value breaks its schema becomes a
``QuarantinedChange`` instead of an event, so one odd change neither blocks the rest of
the delivery nor is lost (SPEC §4).  Input dicts are never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sidecar.checks.payload import KNOWN_FIELDS, check_change_value
from sidecar.errors import BadPayload
from sidecar.events import (
    Event,
    JSONValue,
    QuarantinedChange,
    content_event_id,
    format_time,
    message_event_id,
    status_event_id,
)

__all__ = ["Normalized", "normalize", "normalize_change", "renormalize"]

_UNKNOWN_FIELD_POLICIES = ("forward", "drop")
_MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime can hold


@dataclass(frozen=True, slots=True)
class Normalized:
    events: list[Event]
    quarantined: list[QuarantinedChange]


def normalize(
    envelopes: list[dict[str, JSONValue]],
    *,
    received_at: datetime,
    unknown_fields: str = "forward",
) -> Normalized:
    """Turn envelopes already checked by ``parse_envelopes`` into events, in order."""
    if unknown_fields not in _UNKNOWN_FIELD_POLICIES:
        raise ValueError(f"unknown_fields must be 'forward' or 'drop', not {unknown_fields!r}")
    events: list[Event] = []
    quarantined: list[QuarantinedChange] = []
    for envelope in envelopes:
        for entry in envelope["entry"]:
            waba_id, entry_time = entry["id"], entry.get("time")
            for change in entry["changes"]:
                field, value = change["field"], change["value"]
                if field not in KNOWN_FIELDS and unknown_fields == "drop":
                    continue
                reason = check_change_value(field, value)
                if reason is not None:
                    quarantined.append(_quarantine(waba_id, entry_time, field, value, reason))
                    continue
                events.extend(_split(waba_id, entry_time, field, value, received_at))
    return Normalized(events=events, quarantined=quarantined)


def normalize_change(
    waba_id: str,
    entry_time: int | None,
    field: str,
    value: dict[str, JSONValue],
    *,
    received_at: datetime,
    force: bool = False,
) -> list[Event]:
    """The events of one change; used to replay a quarantined change.

    Raises ``BadPayload`` when the value still breaks its field's schema, since a broken
    value has no element ids to derive (e.g. a message without an ``id``) — unless
    ``force``: then the change is forwarded whole and unsplit, as an unknown field would
    be (one ``whatsapp.<field>`` event, id from the content, data = the value as is)."""
    reason = check_change_value(field, value)
    if reason is None:
        return _split(waba_id, entry_time, field, value, received_at)
    if not force:
        raise BadPayload(f"{field}: {reason}")
    return [_whole_change(waba_id, entry_time, field, value, received_at)]


def renormalize(change: QuarantinedChange, received_at: datetime, *,
                force: bool = False) -> list[Event]:
    """A quarantined change's events now (``spool replay``): the spool's ``Renormalize``."""
    return normalize_change(change.waba_id, change.entry_time, change.field, change.value,
                            received_at=received_at, force=force)


def _quarantine(
    waba_id: str, entry_time: int | None, field: str, value: dict[str, JSONValue], reason: str
) -> QuarantinedChange:
    return QuarantinedChange(
        id=content_event_id(waba_id, field, entry_time, value),
        waba_id=waba_id,
        field=field,
        entry_time=entry_time,
        reason=reason,
        value=value,
    )


def _split(
    waba_id: str,
    entry_time: int | None,
    field: str,
    value: dict[str, JSONValue],
    received_at: datetime,
) -> list[Event]:
    if field == "messages":
        return _split_messages(waba_id, entry_time, value, received_at)
    return [_whole_change(waba_id, entry_time, field, value, received_at)]


def _whole_change(waba_id: str, entry_time: int | None, field: str,
                  value: dict[str, JSONValue], received_at: datetime) -> Event:
    """One event for a whole change: every field but ``messages``, and unknown fields."""
    return _event(
        event_id=content_event_id(waba_id, field, entry_time, value),
        kind=f"whatsapp.{field}",
        field=field,
        waba_id=waba_id,
        value=value,
        moment=_occurred_at(value, entry_time, received_at),
        received_at=received_at,
        data=value,
    )


def _split_messages(
    waba_id: str, entry_time: int | None, value: dict[str, JSONValue], received_at: datetime
) -> list[Event]:
    metadata = value["metadata"]
    contacts = value.get("contacts") or []
    events: list[Event] = []
    for message in value.get("messages", []):
        data = {**message, "metadata": metadata, "contact": _contact_of(message, contacts)}
        event_id = message_event_id(message["id"])
        events.append(_element_event(event_id, "whatsapp.message", waba_id, entry_time, value,
                                     data, received_at))
    for status in value.get("statuses", []):
        data = {**status, "metadata": metadata}
        event_id = status_event_id(status["id"], status["status"], status["timestamp"])
        events.append(_element_event(event_id, "whatsapp.status", waba_id, entry_time, value,
                                     data, received_at))
    for error in value.get("errors", []):
        data = {**error, "metadata": metadata}
        event_id = content_event_id(waba_id, "messages", entry_time,
                                    {"metadata": metadata, "error": error})
        events.append(_element_event(event_id, "whatsapp.error", waba_id, entry_time, value,
                                     data, received_at))
    return events


def _element_event(
    event_id: str,
    kind: str,
    waba_id: str,
    entry_time: int | None,
    value: dict[str, JSONValue],
    data: dict[str, JSONValue],
    received_at: datetime,
) -> Event:
    return _event(
        event_id=event_id,
        kind=kind,
        field="messages",
        waba_id=waba_id,
        value=value,
        moment=_occurred_at(data, entry_time, received_at),
        received_at=received_at,
        data=data,
    )


def _event(
    *,
    event_id: str,
    kind: str,
    field: str,
    waba_id: str,
    value: dict[str, JSONValue],
    moment: datetime,
    received_at: datetime,
    data: dict[str, JSONValue],
) -> Event:
    return Event(
        id=event_id,
        type=kind,
        field=field,
        waba_id=waba_id,
        phone_number_id=_phone_number_id(value),
        occurred_at=format_time(moment),
        received_at=format_time(received_at, millis=True),
        data=data,
    )


def _contact_of(message: dict[str, JSONValue], contacts: list[JSONValue]) -> JSONValue:
    """The sender's contacts entry; else the only one there is; else None."""
    sender = message.get("from")
    for contact in contacts:
        if isinstance(contact, dict) and contact.get("wa_id") == sender:
            return contact
    return contacts[0] if len(contacts) == 1 else None


def _phone_number_id(value: dict[str, JSONValue]) -> str | None:
    metadata = value.get("metadata")
    if isinstance(metadata, dict):
        phone_number_id = metadata.get("phone_number_id")
        if isinstance(phone_number_id, str):
            return phone_number_id
    return None


def _occurred_at(
    element: dict[str, JSONValue], entry_time: int | None, received_at: datetime
) -> datetime:
    """The element's own timestamp, else the entry's time, else when we received it."""
    for candidate in (element.get("timestamp"), entry_time):
        moment = _unix_time(candidate)
        if moment is not None:
            return moment
    return received_at


def _unix_time(candidate: JSONValue) -> datetime | None:
    """A UTC datetime from unix seconds given as an int or a string of digits, or None."""
    if isinstance(candidate, str):
        if not (candidate.isascii() and candidate.isdigit() and len(candidate) <= 12):
            return None
        seconds = int(candidate)
    elif isinstance(candidate, int) and not isinstance(candidate, bool):
        seconds = candidate
    else:
        return None
    if not 0 <= seconds <= _MAX_UNIX_S:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc)
