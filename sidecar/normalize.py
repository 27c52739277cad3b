"""Checked envelopes → the events the upstream receives, plus quarantined changes.

Pure on purpose: the webhook route, the spool's replay and the tests all call the same
code, and the same delivery always yields the same events with the same ids, whichever
instance computes them (docs/events.md).  A known field whose value breaks its schema
becomes a ``QuarantinedChange`` instead of events, so one odd change neither blocks the
rest of the delivery nor is lost.  A delivery past its ``Bounds`` (too many events, or
too many bytes to store for its size) becomes one ``QuarantinedChange`` holding all of
it, replayable like any other.  Input dicts are never mutated; events of one change
share its ``metadata`` and contact objects rather than copies (the spool stores them
once, ``spool.parts``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sidecar.checks.payload import KNOWN_FIELDS, check_change_value
from sidecar.checks.schemas import SPLIT_ARRAYS
from sidecar.errors import BadPayload
from sidecar.events import (
    Event,
    JSONValue,
    QuarantinedChange,
    call_event_id,
    content_digest,
    content_event_id,
    echo_event_id,
    format_time,
    message_event_id,
    status_event_id,
)

__all__ = ["Normalized", "Bounds", "normalize", "normalize_change", "renormalize",
           "SPLIT_FIELDS", "DELIVERY_FIELD", "STORED_BYTES_PER_BODY_BYTE",
           "STORED_BYTES_ALLOWANCE"]

SPLIT_FIELDS = frozenset({"messages", "calls", "message_echoes", "smb_message_echoes"})
"""Fields whose value is split into one event per element of its arrays."""

DELIVERY_FIELD = "(delivery)"
"""The ``field`` of a quarantined whole delivery; no Meta field has parentheses."""

STORED_BYTES_PER_BODY_BYTE = 8
"""K: a delivery may add at most K × its body's size to the spool, and send at most as
much upstream (docs/events.md)..."""
STORED_BYTES_ALLOWANCE = 64 * 1024
"""... plus this much, so that a small delivery of small elements (each event has some
250 bytes of its own around its element) is never held back for its size."""

_UNKNOWN_FIELD_POLICIES = ("forward", "drop")
_MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime can hold
# Value keys of a split change that reach the upstream inside each event (metadata,
# contact) or say nothing (messaging_product); any other key is forwarded on its own.
_CONSUMED = frozenset({"messaging_product", "metadata", "contacts", *SPLIT_ARRAYS})


@dataclass(frozen=True, slots=True)
class Normalized:
    events: list[Event]
    quarantined: list[QuarantinedChange]


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one delivery may cost: ``limits.max_events_per_delivery`` events, and K × its
    body's size (plus an allowance) both in the spool and sent upstream, measured by the
    spool's own ``measure`` (``(stored, sent)`` bytes)."""

    max_events: int
    body_bytes: int
    measure: Callable[[Sequence[Event]], tuple[int, int]]

    @property
    def max_bytes(self) -> int:
        return STORED_BYTES_PER_BODY_BYTE * self.body_bytes + STORED_BYTES_ALLOWANCE


def normalize(
    envelopes: list[dict[str, JSONValue]],
    *,
    received_at: datetime,
    unknown_fields: str = "forward",
    bounds: Bounds | None = None,
) -> Normalized:
    """Turn envelopes already checked by ``parse_envelopes`` into events, in order.

    With ``bounds``, the event count is checked before any event is built (cheap, so a
    body of 60,000 tiny changes costs a count, not 60,000 events), then the bytes the
    events would add to the spool."""
    if unknown_fields not in _UNKNOWN_FIELD_POLICIES:
        raise ValueError(f"unknown_fields must be 'forward' or 'drop', not {unknown_fields!r}")
    if bounds is not None:
        count = _count_items(envelopes, unknown_fields)
        if count > bounds.max_events:
            return _whole_delivery(envelopes, unknown_fields, f"delivery holds {count} events, more than "
                                   f"limits.max_events_per_delivery ({bounds.max_events})")
    result = _normalize(envelopes, received_at, unknown_fields, force=False)
    # One event cannot pass the size bound: its element is a substring of the body,
    # which re-encoding grows by at most ~4.5x (a float such as 1e15), far below K plus
    # the allowance; so the common delivery of one message or status is not encoded twice.
    if bounds is not None and len(result.events) > 1:
        stored, sent = bounds.measure(result.events)
        # Shared parts (a change's metadata and contacts) are stored once but sent in
        # every event that holds them: a big one shared by many events is bounded here,
        # or one signed delivery could send the upstream a thousand times its size.
        for size, where in ((stored, "add {} bytes to the spool"),
                            (sent, "send {} bytes upstream")):
            if size > bounds.max_bytes:
                return _whole_delivery(envelopes, unknown_fields,
                                       f"delivery would {where.format(size)}, more than "
                                       f"the {bounds.max_bytes} allowed for its "
                                       f"{bounds.body_bytes}-byte body")
    return result


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
    """A quarantined change's events now (``spool replay``): the spool's ``Renormalize``.

    A quarantined whole delivery is normalized again without its bounds (an operator
    asked for it); with ``force``, its changes that still break their schema are
    forwarded whole instead of failing the replay."""
    if change.field != DELIVERY_FIELD:
        return normalize_change(change.waba_id, change.entry_time, change.field,
                                change.value, received_at=received_at, force=force)
    envelopes = change.value.get("envelopes")
    policy = change.value.get("unknown_fields", "forward")
    if not isinstance(envelopes, list) or policy not in _UNKNOWN_FIELD_POLICIES:
        raise BadPayload("not a quarantined delivery")
    result = _normalize(envelopes, received_at, policy, force=force)
    if result.quarantined:
        first = result.quarantined[0]
        raise BadPayload(f"{len(result.quarantined)} change(s) of the delivery still cannot "
                         f"become events; the first: {first.field}: {first.reason}")
    return result.events


def _normalize(envelopes: list[dict[str, JSONValue]], received_at: datetime,
               unknown_fields: str, *, force: bool) -> Normalized:
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
                if reason is None:
                    events.extend(_split(waba_id, entry_time, field, value, received_at))
                elif force:
                    events.append(_whole_change(waba_id, entry_time, field, value, received_at))
                else:
                    quarantined.append(QuarantinedChange(
                        id=content_event_id(waba_id, field, entry_time, value), waba_id=waba_id,
                        field=field, entry_time=entry_time, reason=reason, value=value))
    return Normalized(events=events, quarantined=quarantined)


def _count_items(envelopes: list[dict[str, JSONValue]], unknown_fields: str) -> int:
    """An upper bound of the events and quarantined changes the delivery yields, counted
    without building any: the elements of a split change's arrays, else one per change."""
    count = 0
    for envelope in envelopes:
        for entry in envelope["entry"]:
            for change in entry["changes"]:
                field, value = change["field"], change["value"]
                if field not in KNOWN_FIELDS and unknown_fields == "drop":
                    continue
                if field not in SPLIT_FIELDS:
                    count += 1
                    continue
                elements = sum(len(value[key]) for key in SPLIT_ARRAYS
                               if isinstance(value.get(key), list))
                count += max(1, elements + (not _CONSUMED.issuperset(value)))
    return count


def _whole_delivery(envelopes: list[dict[str, JSONValue]], unknown_fields: str,
                    reason: str) -> Normalized:
    """The delivery as one quarantined change (``renormalize`` replays it, under the
    unknown-field policy it arrived under).  Its id is the content's, so Meta's
    redelivery of it is stored once; its WABA id is the first entry's."""
    waba_id = next((entry["id"] for envelope in envelopes for entry in envelope["entry"]), "")
    value: dict[str, JSONValue] = {"envelopes": envelopes, "unknown_fields": unknown_fields}
    return Normalized(events=[], quarantined=[QuarantinedChange(
        id=content_event_id(waba_id, DELIVERY_FIELD, None, envelopes), waba_id=waba_id,
        field=DELIVERY_FIELD, entry_time=None, reason=reason, value=value)])


def _split(waba_id: str, entry_time: int | None, field: str, value: dict[str, JSONValue],
           received_at: datetime) -> list[Event]:
    if field in SPLIT_FIELDS:
        return _split_elements(waba_id, entry_time, field, value, received_at)
    return [_whole_change(waba_id, entry_time, field, value, received_at)]


def _whole_change(waba_id: str, entry_time: int | None, field: str,
                  value: dict[str, JSONValue], received_at: datetime) -> Event:
    """One event for a whole change: every field not split, and unknown fields."""
    return _event(content_event_id(waba_id, field, entry_time, value), f"whatsapp.{field}",
                  field, waba_id, _phone_number_id(value), entry_time, value, received_at)


def _split_elements(waba_id: str, entry_time: int | None, field: str,
                    value: dict[str, JSONValue], received_at: datetime) -> list[Event]:
    metadata = value.get("metadata")
    contacts = value.get("contacts")
    contact_of = _contact_matcher(contacts if isinstance(contacts, list) else [])
    phone_number_id = _phone_number_id(value)
    events: list[Event] = []

    def add(event_id: str, kind: str, data: dict[str, JSONValue]) -> None:
        events.append(_event(event_id, kind, field, waba_id, phone_number_id, entry_time,
                             data, received_at))

    for message in value.get("messages", ()):
        add(message_event_id(message["id"]), "whatsapp.message",
            {**message, "metadata": metadata,
             "contact": contact_of(message, ("from", "from_user_id"))})
    for status in value.get("statuses", ()):
        data = {**status, "metadata": metadata}
        if isinstance(contacts, list):  # business-scoped ids: statuses carry contacts too
            data["contact"] = contact_of(status, _STATUS_RECIPIENT_KEYS)
        add(status_event_id(status["id"], status["status"], status.get("timestamp"),
                            _participant(status)),
            "whatsapp.status", data)
    for call in value.get("calls", ()):
        call_id = call.get("id")
        add(call_event_id(call_id, call.get("event"), call.get("status"), call.get("timestamp"))
            if isinstance(call_id, str) and call_id else
            content_event_id(waba_id, field, entry_time, {"metadata": metadata, "call": call}),
            "whatsapp.call",
            {**call, "metadata": metadata,
             "contact": contact_of(call, ("from", "to", "from_user_id", "to_user_id"))})
    for echo in value.get("message_echoes", ()):
        add(echo_event_id(echo["id"]), "whatsapp.message_echo",
            {**echo, "metadata": metadata,
             "contact": contact_of(echo, ("to", "from", "to_user_id", "from_user_id"))})
    errors = value.get("errors", ())
    # An error about a user's message (an unsupported type) comes with that user's
    # contact: the upstream learns whose it is, and two users' errors of one kind are two
    # events, not one id.  The contacts enter each id as one digest, made once per change.
    contacts_digest = content_digest(contacts) if errors and contacts else None
    for error in errors:
        derived_from: dict[str, JSONValue] = {"metadata": metadata, "error": error}
        data = {**error, "metadata": metadata}
        if contacts_digest is not None:
            derived_from["contacts"] = contacts_digest
            data["contact"] = contact_of(error, ())
        add(content_event_id(waba_id, field, entry_time, derived_from), "whatsapp.error", data)
    rest = {key: item for key, item in value.items() if key not in _CONSUMED}
    if rest:  # a key Meta added beside the arrays: forwarded, never stripped
        data = {**rest, "metadata": metadata}
        add(content_event_id(waba_id, field, entry_time, data), f"whatsapp.{field}", data)
    return events


# A group message's status is about one participant (recipient_id is then the group).
_STATUS_RECIPIENT_KEYS = ("recipient_participant_id", "recipient_participant_user_id",
                          "recipient_id", "recipient_user_id")


def _participant(status: dict[str, JSONValue]) -> str | None:
    """The group participant a status is about, or None: the business-scoped id when
    there is one (it is always sent, the phone number not always), else the number."""
    for key in ("recipient_participant_user_id", "recipient_participant_id"):
        participant = status.get(key)
        if isinstance(participant, str) and participant:
            return participant
    return None


def _contact_matcher(contacts: list[JSONValue]
                     ) -> Callable[[dict[str, JSONValue], tuple[str, ...]], JSONValue]:
    """The sender's (or recipient's) ``contacts`` entry: the first whose ``wa_id`` or
    ``user_id`` equals one of the element's keys, tried in order; else the only entry
    there is; else None.  Empty strings never match (``wa_id`` may be ``""``)."""
    by_id: dict[str, JSONValue] = {}
    for key in ("wa_id", "user_id"):
        for contact in contacts:
            if isinstance(contact, dict):
                wanted = contact.get(key)
                if isinstance(wanted, str) and wanted:
                    by_id.setdefault(f"{key}:{wanted}", contact)
    sole = contacts[0] if len(contacts) == 1 else None

    def contact_of(element: dict[str, JSONValue], keys: tuple[str, ...]) -> JSONValue:
        for key in keys:
            wanted = element.get(key)
            if isinstance(wanted, str) and wanted:
                found = by_id.get(f"wa_id:{wanted}") or by_id.get(f"user_id:{wanted}")
                if found is not None:
                    return found
        return sole

    return contact_of


def _event(event_id: str, kind: str, field: str, waba_id: str, phone_number_id: str | None,
           entry_time: int | None, data: dict[str, JSONValue], received_at: datetime) -> Event:
    return Event(
        id=event_id,
        type=kind,
        field=field,
        waba_id=waba_id,
        phone_number_id=phone_number_id,
        occurred_at=format_time(_occurred_at(data, entry_time, received_at)),
        received_at=format_time(received_at, millis=True),
        data=data,
    )


def _phone_number_id(value: dict[str, JSONValue]) -> str | None:
    metadata = value.get("metadata")
    if isinstance(metadata, dict):
        phone_number_id = metadata.get("phone_number_id")
        if isinstance(phone_number_id, str):
            return phone_number_id
        if isinstance(phone_number_id, int) and not isinstance(phone_number_id, bool):
            return str(phone_number_id)
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
