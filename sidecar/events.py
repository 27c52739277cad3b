"""The normalized event the upstream receives, and its content-derived id.

Ids are derived from content only, so every sidecar instance (and every retry of the
same delivery from Meta) computes the same id for the same change; the spool and the
upstream deduplicate on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "JSONValue",
    "json_text",
    "Event",
    "QuarantinedChange",
    "message_event_id",
    "status_event_id",
    "call_event_id",
    "echo_event_id",
    "timestamp_text",
    "content_event_id",
    "content_digest",
    "batch_id",
    "canonical_json",
    "format_time",
    "encode_event",
    "join_events",
]

JSONValue = Any  # raw JSON: dict / list / str / int / float / bool / None


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    field: str
    waba_id: str
    phone_number_id: str | None
    occurred_at: str
    received_at: str
    data: dict[str, JSONValue]

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "id": self.id,
            "type": self.type,
            "field": self.field,
            "waba_id": self.waba_id,
            "phone_number_id": self.phone_number_id,
            "occurred_at": self.occurred_at,
            "received_at": self.received_at,
            "data": self.data,
        }

    @classmethod
    def decode(cls, body: bytes) -> Event:
        """The event from its ``encode_event`` bytes."""
        return cls.from_dict(json.loads(body))

    @classmethod
    def from_dict(cls, d: dict[str, JSONValue]) -> Event:
        return cls(
            id=d["id"],
            type=d["type"],
            field=d["field"],
            waba_id=d["waba_id"],
            phone_number_id=d["phone_number_id"],
            occurred_at=d["occurred_at"],
            received_at=d["received_at"],
            data=d["data"],
        )


@dataclass(frozen=True, slots=True)
class QuarantinedChange:
    """A change of a known field that could not become events: kept, listed, replayable."""

    id: str  # content_event_id(waba_id, field, entry_time, value)
    waba_id: str
    field: str
    entry_time: int | None
    reason: str  # why it could not become events
    value: dict[str, JSONValue]  # the change's value, unmodified


def canonical_json(value: JSONValue) -> str:
    """One text per JSON value: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so no two different tuples of parts hash the same bytes (a part
        # may contain any character, NUL included).
        encoded = part.encode("utf-8", "surrogatepass")
        h.update(b"%d:" % len(encoded))
        h.update(encoded)
    return "evt_" + h.hexdigest()[:32]


def message_event_id(wamid: str) -> str:
    return _digest("message", wamid)


def timestamp_text(timestamp: JSONValue) -> str:
    """One text per timestamp, as ids use it: Meta sends unix seconds as a string of digits
    or as an integer (``"1700000000"`` and ``1700000000`` are the same moment, so the same
    id); a string is taken as sent, an absent one is empty, anything else is its JSON."""
    if timestamp is None:
        return ""
    if isinstance(timestamp, str):
        return timestamp
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        return str(timestamp)
    return canonical_json(timestamp)


def status_event_id(wamid: str, status: str, timestamp: JSONValue,
                    participant: str | None = None) -> str:
    """A group message has a status per participant (``delivered``, ``read``), at the same
    second: the participant is part of those ids (and of no other status's)."""
    if participant:
        return _digest("status", wamid, status, timestamp_text(timestamp), participant)
    return _digest("status", wamid, status, timestamp_text(timestamp))


def call_event_id(call_id: str, event: JSONValue, status: JSONValue,
                  timestamp: JSONValue) -> str:
    """A call has several events (``connect``, ``terminate``, ...) and statuses, each its own."""
    return _digest("call", call_id, timestamp_text(event), timestamp_text(status),
                   timestamp_text(timestamp))


def echo_event_id(wamid: str) -> str:
    """An echo is the copy of a message the business sent: one event per wamid, never the
    same id as an inbound message's."""
    return _digest("message_echo", wamid)


def content_digest(value: JSONValue) -> str:
    """A short stand-in for a large value inside another id (``evt_`` and 32 hex digits)."""
    return _digest("content", canonical_json(value))


def content_event_id(waba_id: str, field: str, entry_time: int | None, value: JSONValue) -> str:
    return _digest("change", waba_id, field, "" if entry_time is None else str(entry_time),
                   canonical_json(value))


def batch_id(event_ids: list[str]) -> str:
    """The ``webhook-id`` of a batch: derived from its events, so a retry reuses it."""
    return "batch_" + _digest("batch", *event_ids)[4:]


def format_time(moment: datetime, *, millis: bool = False) -> str:
    moment = moment.astimezone(timezone.utc)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def json_text(value: JSONValue) -> str:
    """A value in the one JSON form events are sent and stored in (compact, UTF-8 as is):
    within an event's encoding, a part of it reads exactly as this."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_event(event: Event) -> bytes:
    """One event as the upstream receives it (and as the spool stores it)."""
    return json_text(event.to_dict()).encode("utf-8")


def join_events(encoded: list[bytes], *, as_array: bool) -> bytes:
    """The request body: one encoded event, or a JSON array of several."""
    if as_array:
        return b"[" + b",".join(encoded) + b"]"
    (only,) = encoded
    return only
