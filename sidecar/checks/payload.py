"""Strict parsing of a webhook body and the envelope check (field values: ``schemas``).

Why strict: the body is forwarded, hashed into event ids and stored, so anything that
two JSON parsers could read differently (duplicate keys, lone surrogates, ``NaN``, a
BOM, absurd nesting) is refused here, once, with ``BadPayload`` (HTTP 400).

Why two levels: a broken *envelope* means we cannot even tell what Meta sent, so the
whole delivery is refused.  A known field whose *value* breaks its schema is only
reported (``check_change_value``, from ``checks.schemas``, returns a reason) so the
caller can quarantine that one change and still accept the rest of the delivery
(docs/events.md).  Everything here is pure: bytes and dicts in, values or
``BadPayload`` out.
"""

from __future__ import annotations

import json
import re
import sys
from math import isfinite

from sidecar.checks.schemas import (
    KNOWN_FIELDS,
    an_object,
    check_change_value,
    const,
    list_of,
    obj,
    opt,
    req,
    string,
    unix_time,
)
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
# 309 digits: the shortest integer greater than the largest double (1.8e308).
_LONG_DIGITS = re.compile(rb"[0-9]{309}")
_MAX_DOUBLE = sys.float_info.max
# Any run of 309 digits holds two consecutive multiples of 154 as positions: every 154th
# byte, two digits in a row, is a cheap first test (a regex over the whole body costs
# ~8 ns a byte, most of the JSON parse of a typical delivery).
_SAMPLE_STEP = 154
_TWO_DIGITS = re.compile(rb"[0-9]{2}")


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
            # Every integer through a Python hook only when the bytes hold a run of digits
            # long enough to pass a double (a string of digits may cause that too).
            parse_int=_double_sized_int if _may_hold_long_digits(raw) else None,
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


def _may_hold_long_digits(raw: bytes) -> bool:
    return (_TWO_DIGITS.search(raw[::_SAMPLE_STEP]) is not None
            and _LONG_DIGITS.search(raw) is not None)


def _double_sized_int(text: str) -> int:
    number = int(text)
    if abs(number) > _MAX_DOUBLE:  # a double-based JSON reader would read infinity
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


# --------------------------------------------------------------------------- envelope

_CHANGE = obj({"field": req(string), "value": req(an_object)})
_ENTRY = obj({"id": req(string), "time": opt(unix_time),
               "changes": req(list_of(_CHANGE))})
_ENVELOPE = obj(
    {"object": req(const("whatsapp_business_account")), "entry": req(list_of(_ENTRY))}
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
