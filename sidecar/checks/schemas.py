"""The value schema of each known field, and the few combinators they are built from.

What a schema is for: telling a change that can become events from one that cannot
(docs/events.md, "Schemas").  So it requires only what the sidecar derives events and
ids from — a message's ``id``, a status's ``id`` and ``status``, an echo's ``id`` — and
checks the type of a few keys consumers route on (``event``, ``decision``, ``from``,
identifiers) only when they are present.  Everything else is optional and
type-tolerant where Meta varies (timestamps and identifiers as strings or integers,
``null`` where Meta nulls, placeholders in its documentation examples), enums are
open strings, and unknown keys are allowed at every level.

A check takes ``(value, path)`` and returns None when the value fits, else a short
reason naming the path.  Pure; nothing here raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sidecar.events import JSONValue

__all__ = ["KNOWN_FIELDS", "SPLIT_ARRAYS", "check_change_value"]

Check = Callable[[JSONValue, str], "str | None"]
Key = tuple[bool, Check]  # (required, check)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def label(path: str) -> str:
    return path or "value"


def string(value: JSONValue, path: str) -> str | None:
    return None if isinstance(value, str) else f"{label(path)} must be a string"


def non_empty_string(value: JSONValue, path: str) -> str | None:
    if isinstance(value, str) and value:
        return None
    return f"{label(path)} must be a non-empty string"


def unix_time(value: JSONValue, path: str) -> str | None:
    """``entry.time``: an integer that fits the spool's 64-bit columns (it is stored as
    one).  Meta sends an integer here, always; its documentation's placeholders are not."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return None
    return f"{label(path)} must be a unix time (a non-negative 64-bit integer)"


def scalar(value: JSONValue, path: str) -> str | None:
    """An identifier or a timestamp: Meta sends a string or an integer, by field and by
    year (``"1749416383"`` / ``1749416383``, ``"1315502779341834"`` / ``1315502779341834``)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return f"{label(path)} must be a string or an integer"


def an_object(value: JSONValue, path: str) -> str | None:
    return None if isinstance(value, dict) else f"{label(path)} must be an object"


def const(expected: str) -> Check:
    def check(value: JSONValue, path: str) -> str | None:
        return None if value == expected else f'{label(path)} must be "{expected}"'

    return check


def nullable(inner: Check) -> Check:
    """``inner``, or JSON ``null`` (Meta nulls keys such as ``rejection_reason``)."""

    def check(value: JSONValue, path: str) -> str | None:
        return None if value is None else inner(value, path)

    return check


def req(check: Check) -> Key:
    return (True, check)


def opt(check: Check) -> Key:
    return (False, check)


def obj(keys: Mapping[str, Key], *whole: Check) -> Check:
    """An object whose listed keys fit their checks; other keys are allowed.

    ``whole`` are extra checks run on the object itself after its keys."""

    def check(value: JSONValue, path: str) -> str | None:
        if not isinstance(value, dict):
            return f"{label(path)} must be an object"
        for key, (required, sub) in keys.items():
            if key not in value:
                if required:
                    return f"{join(path, key)} is required"
                continue
            reason = sub(value[key], join(path, key))
            if reason is not None:
                return reason
        for extra in whole:
            reason = extra(value, path)
            if reason is not None:
                return reason
        return None

    return check


def list_of(item: Check) -> Check:
    def check(value: JSONValue, path: str) -> str | None:
        if not isinstance(value, list):
            return f"{label(path)} must be a list"
        for index, element in enumerate(value):
            reason = item(element, f"{path}[{index}]")
            if reason is not None:
                return reason
        return None

    return check


def any_key(*names: str) -> Check:
    def check(value: JSONValue, path: str) -> str | None:
        if any(name in value for name in names):
            return None
        return f"{label(path)} needs one of: {', '.join(names)}"

    return check


# --------------------------------------------------------------------------- pieces

_TEXT = opt(nullable(string))
_ID = opt(nullable(scalar))
_METADATA = obj({"display_phone_number": _TEXT, "phone_number_id": _ID})
_ERROR = obj({"code": opt(nullable(scalar))})
_ERRORS = opt(list_of(_ERROR))
_CONTACT = obj({"wa_id": opt(string), "user_id": opt(string), "parent_user_id": opt(string),
                "profile": opt(nullable(an_object))})
_COMMON = {"metadata": opt(nullable(_METADATA)), "contacts": opt(list_of(_CONTACT))}

# Elements split into events: what their ids are derived from is required, the keys a
# contact is matched on are strings when present, the rest is free.
_MESSAGE = obj({"id": req(non_empty_string), "from": opt(string), "from_user_id": opt(string),
                "timestamp": opt(scalar), "errors": _ERRORS})
_STATUS = obj({"id": req(non_empty_string), "status": req(string), "timestamp": opt(scalar),
               "recipient_id": opt(string), "recipient_user_id": opt(string),
               "recipient_participant_id": opt(string),
               "recipient_participant_user_id": opt(string),
               "errors": _ERRORS, "pricing": opt(nullable(an_object)),
               "conversation": opt(nullable(an_object))})
_CALL = obj({"id": opt(string), "from": opt(string), "to": opt(string),
             "timestamp": opt(scalar), "errors": _ERRORS})
_ECHO = obj({"id": req(non_empty_string), "from": opt(string), "to": opt(string),
             "timestamp": opt(scalar)})
SPLIT_ARRAYS: dict[str, tuple[str, Check]] = {
    "messages": ("whatsapp.message", _MESSAGE),
    "statuses": ("whatsapp.status", _STATUS),
    "calls": ("whatsapp.call", _CALL),
    "message_echoes": ("whatsapp.message_echo", _ECHO),
    "errors": ("whatsapp.error", _ERROR),
}
"""The arrays a split field's value may carry: array key -> (event type, element check),
in the order their events are made."""

_SPLIT = obj({**_COMMON, **{key: opt(list_of(check)) for key, (_, check) in SPLIT_ARRAYS.items()}},
             any_key(*SPLIT_ARRAYS))


def _records(key: str, item: Mapping[str, Key] | None = None) -> Check:
    """A messaging-style value (``metadata``, ``contacts``) with an array of records."""
    return obj({**_COMMON, key: opt(list_of(obj(item or {})))})


_GROUPS = _records("groups", {"group_id": opt(string), "type": opt(string),
                              "timestamp": opt(scalar), "errors": _ERRORS})
_TEMPLATE = {"message_template_id": _ID, "message_template_name": _TEXT,
             "message_template_language": _TEXT}
_DECISION = {"display_phone_number": _TEXT, "decision": opt(string)}

_SCHEMAS: dict[str, Check] = {
    # split: one event per element (normalize.py)
    "messages": _SPLIT,
    "calls": _SPLIT,
    "message_echoes": _SPLIT,
    "smb_message_echoes": _SPLIT,
    # one event per change
    "account_alerts": obj({"entity_type": opt(string), "entity_id": _ID,
                           "alert_info": opt(nullable(an_object))}),
    "account_review_update": obj({"decision": opt(string)}),
    "account_settings_update": obj({"type": opt(string), "timestamp": opt(scalar)}),
    "account_update": obj({"event": opt(string), "phone_number": _ID}),
    "automatic_events": _records("automatic_events", {"id": opt(string),
                                                      "event_name": opt(string),
                                                      "timestamp": opt(scalar)}),
    "business_capability_update": obj({key: _ID for key in (
        "max_daily_conversation_per_phone", "max_daily_conversations_per_business",
        "max_phone_numbers_per_business", "max_phone_numbers_per_waba")}),
    "business_username_update": obj({**_DECISION, "requested_username": _TEXT}),
    "consumer_profile": obj(_COMMON),
    "flows": obj({"event": opt(string), "flow_id": _ID}),
    "group_lifecycle_update": _GROUPS,
    "group_participants_update": _GROUPS,
    "group_settings_update": _GROUPS,
    "group_status_update": _GROUPS,
    "history": _records("history", {"metadata": opt(nullable(an_object)),
                                    "threads": opt(list_of(obj({"id": opt(string)}))),
                                    "errors": _ERRORS}),
    "message_template_components_update": obj(
        {**_TEMPLATE, "message_template_buttons": opt(list_of(an_object))}),
    "message_template_quality_update": obj(
        {**_TEMPLATE, "previous_quality_score": _TEXT, "new_quality_score": _TEXT}),
    "message_template_status_update": obj({**_TEMPLATE, "event": opt(string),
                                           "reason": _TEXT}),
    "messaging_handovers": obj(_COMMON),
    "partner_solutions": obj({"event": opt(string), "solution_id": _ID,
                              "solution_status": _TEXT}),
    "payment_configuration_update": obj({"configuration_name": _TEXT, "provider_name": _TEXT,
                                         "status": _TEXT}),
    "phone_number_name_update": obj({**_DECISION, "requested_verified_name": _TEXT,
                                     "rejection_reason": _TEXT}),
    "phone_number_quality_update": obj({"display_phone_number": _TEXT, "event": opt(string)}),
    "phone_number_username_update": obj({**_DECISION, "requested_username": _TEXT}),
    "security": obj({"event": opt(string), "display_phone_number": _TEXT}),
    "smb_app_state_sync": _records("state_sync", {"type": opt(string), "action": opt(string)}),
    "standby": obj({**_COMMON, "messages": opt(list_of(an_object)),
                    "statuses": opt(list_of(an_object))}),
    "template_category_update": obj({**_TEMPLATE, "new_category": _TEXT,
                                     "previous_category": _TEXT}),
    "user_preferences": _records("user_preferences", {"wa_id": opt(string),
                                                      "user_id": opt(string),
                                                      "value": opt(string),
                                                      "timestamp": opt(scalar)}),
}

KNOWN_FIELDS: frozenset[str] = frozenset(_SCHEMAS)
"""Fields with a value schema.  Any other field is forwarded (or dropped), never refused."""


def check_change_value(field: str, value: dict[str, JSONValue]) -> str | None:
    """None when ``value`` fits ``field``'s schema (or the field is unknown), else a reason."""
    schema = _SCHEMAS.get(field)
    if schema is None:
        return None
    return schema(value, "")
