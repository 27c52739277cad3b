"""Strict parsing of a webhook body, the envelope check, and the per-field value schemas.

Why strict: the body is forwarded, hashed into event ids and stored, so anything that
two JSON parsers could read differently (duplicate keys, lone surrogates, ``NaN``, a
BOM, absurd nesting) is refused here, once, with ``BadPayload`` (HTTP 400).

Why two levels: a broken *envelope* means we cannot even tell what Meta sent, so the
whole delivery is refused.  A known field whose *value* breaks its schema is only
reported (``check_change_value`` returns a reason) so the caller can quarantine that
one change and still accept the rest of the delivery (SPEC §4).

Schemas are small on purpose: they pin only what we route on or derive ids from, keep
enums as open strings, and always allow unknown keys, because Meta adds keys often.
Everything here is pure: bytes and dicts in, values or ``BadPayload`` out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from math import isfinite

from sidecar.errors import BadPayload
from sidecar.events import JSONValue

__all__ = [
    "MAX_DEPTH",
    "KNOWN_FIELDS",
    "parse_json",
    "parse_envelopes",
    "check_change_value",
]

MAX_DEPTH = 64
"""The deepest nesting of arrays/objects accepted; the outermost container is level 1."""

_BOM = b"\xef\xbb\xbf"
# A ``\uD800``..``\uDFFF`` escape; only then can a decoded string hold a lone surrogate
# (the UTF-8 decoder already refuses encoded surrogates).  False positives (``\\ud800``)
# merely cost a walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# --------------------------------------------------------------------------- JSON


def parse_json(raw: bytes) -> JSONValue:
    """Parse ``raw`` as RFC 8259 JSON in UTF-8, or raise ``BadPayload``.

    The happy path is one ``json.loads`` with hooks; the tree is walked afterwards only
    when cheap byte checks say a lone surrogate or deep nesting is possible.
    """
    text = _decode_utf8(raw)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys_object,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise BadPayload(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BadPayload(f"invalid JSON: {exc.msg} at {where}") from None
    except ValueError:  # e.g. an integer longer than Python's int/str digit limit
        raise BadPayload("invalid JSON: number too long") from None
    needs_depth = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    needs_surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    if needs_depth or needs_surrogates:
        _walk(value, check_depth=needs_depth, check_surrogates=needs_surrogates)
    return value


def _decode_utf8(raw: bytes) -> str:
    if raw.startswith(_BOM):
        raise BadPayload("body starts with a UTF-8 byte order mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPayload("body is not valid UTF-8") from None
    if not text.strip(" \t\r\n"):
        raise BadPayload("body is empty")
    return text


def _unique_keys_object(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadPayload(f"duplicate object key {key[:40]!r}")
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    number = float(text)
    if not isfinite(number):
        raise BadPayload("number out of range")
    return number


def _refuse_constant(name: str) -> JSONValue:
    raise BadPayload(f"{name} is not valid JSON")


def _walk(root: JSONValue, *, check_depth: bool, check_surrogates: bool) -> None:
    """Iterative walk (no recursion, whatever the depth) for depth and lone surrogates."""
    stack: list[tuple[JSONValue, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if check_depth and depth > MAX_DEPTH:
                raise BadPayload(f"JSON nested deeper than {MAX_DEPTH} levels")
            for key, item in node.items():
                if check_surrogates:
                    _refuse_lone_surrogate(key)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            if check_depth and depth > MAX_DEPTH:
                raise BadPayload(f"JSON nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in node)
        elif check_surrogates and isinstance(node, str):
            _refuse_lone_surrogate(node)


def _refuse_lone_surrogate(text: str) -> None:
    # Valid pairs were already joined by the decoder, so any surrogate left is lone.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPayload("string holds a lone UTF-16 surrogate") from None


# --------------------------------------------------------------------------- validators
# A check takes (value, path) and returns None when the value fits, else a short reason
# naming the path.  The schemas below are built from these few combinators.

_Check = Callable[[JSONValue, str], "str | None"]
_Key = tuple[bool, _Check]  # (required, check)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _label(path: str) -> str:
    return path or "value"


def _str(value: JSONValue, path: str) -> str | None:
    return None if isinstance(value, str) else f"{_label(path)} must be a string"


def _int(value: JSONValue, path: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return f"{_label(path)} must be an integer"


def _unix_time(value: JSONValue, path: str) -> str | None:
    """An integer that fits the spool's 64-bit columns (entry.time is stored as one)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return None
    return f"{_label(path)} must be a unix time (a non-negative 64-bit integer)"


def _digits(value: JSONValue, path: str) -> str | None:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return None
    return f"{_label(path)} must be a string of digits"


def _object(value: JSONValue, path: str) -> str | None:
    return None if isinstance(value, dict) else f"{_label(path)} must be an object"


def _const(expected: str) -> _Check:
    def check(value: JSONValue, path: str) -> str | None:
        return None if value == expected else f'{_label(path)} must be "{expected}"'

    return check


def _req(check: _Check) -> _Key:
    return (True, check)


def _opt(check: _Check) -> _Key:
    return (False, check)


def _obj(keys: Mapping[str, _Key], *whole: _Check) -> _Check:
    """An object whose listed keys fit their checks; other keys are allowed.

    ``whole`` are extra checks run on the object itself after its keys."""

    def check(value: JSONValue, path: str) -> str | None:
        if not isinstance(value, dict):
            return f"{_label(path)} must be an object"
        for key, (required, sub) in keys.items():
            if key not in value:
                if required:
                    return f"{_join(path, key)} is required"
                continue
            reason = sub(value[key], _join(path, key))
            if reason is not None:
                return reason
        for extra in whole:
            reason = extra(value, path)
            if reason is not None:
                return reason
        return None

    return check


def _list_of(item: _Check) -> _Check:
    def check(value: JSONValue, path: str) -> str | None:
        if not isinstance(value, list):
            return f"{_label(path)} must be a list"
        for index, element in enumerate(value):
            reason = item(element, f"{path}[{index}]")
            if reason is not None:
                return reason
        return None

    return check


def _any_key(*names: str) -> _Check:
    def check(value: JSONValue, path: str) -> str | None:
        if any(name in value for name in names):
            return None
        return f"{_label(path)} needs one of: {', '.join(names)}"

    return check


# --------------------------------------------------------------------------- envelope

_CHANGE = _obj({"field": _req(_str), "value": _req(_object)})
_ENTRY = _obj({"id": _req(_str), "time": _opt(_unix_time),
               "changes": _req(_list_of(_CHANGE))})
_ENVELOPE = _obj(
    {"object": _req(_const("whatsapp_business_account")), "entry": _req(_list_of(_ENTRY))}
)


def parse_envelopes(raw: bytes) -> list[dict[str, JSONValue]]:
    """Parse a body holding one envelope or a non-empty JSON array of envelopes.

    Only the envelope shape is checked here; change values are checked per field by
    ``check_change_value`` so one odd change can be quarantined on its own."""
    body = parse_json(raw)
    if isinstance(body, dict):
        _require_envelope(body, "")
        return [body]
    if isinstance(body, list):
        if not body:
            raise BadPayload("body is an empty array")
        for index, envelope in enumerate(body):
            _require_envelope(envelope, f"[{index}]")
        return body
    raise BadPayload("body must be a JSON object or a non-empty array of objects")


def _require_envelope(envelope: JSONValue, path: str) -> None:
    if not isinstance(envelope, dict):
        raise BadPayload(f"{path or 'body'} must be an object")
    reason = _ENVELOPE(envelope, path)
    if reason is not None:
        raise BadPayload(reason)


# --------------------------------------------------------------------------- field values

_METADATA = _obj({"display_phone_number": _req(_str), "phone_number_id": _req(_str)})

_MESSAGE = _obj(
    {"id": _req(_str), "from": _req(_str), "timestamp": _req(_digits), "type": _req(_str)}
)
_STATUS = _obj(
    {"id": _req(_str), "status": _req(_str), "timestamp": _req(_digits), "recipient_id": _opt(_str)}
)
_ERROR = _obj({"code": _req(_int)})
_CONTACT = _obj({"wa_id": _opt(_str)})

_SCHEMAS: dict[str, _Check] = {
    "messages": _obj(
        {
            "metadata": _req(_METADATA),
            "contacts": _opt(_list_of(_CONTACT)),
            "messages": _opt(_list_of(_MESSAGE)),
            "statuses": _opt(_list_of(_STATUS)),
            "errors": _opt(_list_of(_ERROR)),
        },
        _any_key("messages", "statuses", "errors"),
    ),
    "account_review_update": _obj({"decision": _req(_str)}),
    "account_update": _obj({"event": _req(_str)}),
    "business_capability_update": _obj(
        {
            "max_daily_conversation_per_phone": _opt(_int),
            "max_daily_conversations_per_business": _opt(_int),
            "max_phone_numbers_per_business": _opt(_int),
            "max_phone_numbers_per_waba": _opt(_int),
        }
    ),
    "message_template_status_update": _obj(
        {
            "event": _req(_str),
            "message_template_id": _req(_int),
            "message_template_name": _opt(_str),
            "message_template_language": _req(_str),
        }
    ),
    "phone_number_name_update": _obj({"display_phone_number": _req(_str), "decision": _req(_str)}),
    "phone_number_quality_update": _obj({"display_phone_number": _req(_str), "event": _req(_str)}),
    "security": _obj({"event": _req(_str), "display_phone_number": _opt(_str)}),
    "template_category_update": _obj(
        {"message_template_id": _req(_int), "new_category": _req(_str)}
    ),
    "message_template_quality_update": _obj(
        {"message_template_id": _req(_int), "new_quality_score": _req(_str)}
    ),
    "account_alerts": _obj(
        {"entity_type": _req(_str), "entity_id": _req(_str), "alert_info": _req(_object)}
    ),
    "user_preferences": _obj(
        {
            "metadata": _req(_METADATA),
            "user_preferences": _req(_list_of(_obj({"wa_id": _req(_str), "value": _req(_str)}))),
        }
    ),
    "smb_message_echoes": _obj(
        {"metadata": _req(_METADATA), "message_echoes": _req(_list_of(_obj({"id": _req(_str)})))}
    ),
    "flows": _obj({"event": _req(_str)}),
}

KNOWN_FIELDS: frozenset[str] = frozenset(_SCHEMAS)
"""Fields with a value schema.  Any other field is forwarded (or dropped), never refused."""


def check_change_value(field: str, value: dict[str, JSONValue]) -> str | None:
    """None when ``value`` fits ``field``'s schema (or the field is unknown), else a reason."""
    schema = _SCHEMAS.get(field)
    if schema is None:
        return None
    return schema(value, "")
