"""How a spool stores an event: its own part, plus the parts it shares, each stored once.

Why: events split from one change carry the same ``metadata`` and, for a change with one
contact, the same ``contact``.  Stored inside every event's body, a 100 KB contact in a
change of 3,000 messages becomes 300 MB on disk from a 0.4 MB delivery.  So a spool
stores each event's encoding with those values cut out, and each distinct value once,
under a content-derived part id; what the upstream receives is reassembled byte for byte
(``events.encode_event``), so nothing but storage changes.

An event's *own part* is its encoding with every shared value replaced by ``0``: still
valid JSON (a spool may read its ``type`` without reassembly), and as small as the event
without the shared values.  Its *holes* say where each ``0`` stands and which part goes
there.  Cutting works on the encoder's output, not by re-implementing it: each shared
value is swapped for a sentinel string that JSON escapes into a token no Meta text can
produce by chance (``\\u0000`` around a per-process random nonce); an event whose text
holds a token more than once (a crafted string) is stored whole.

Pure functions, no storage: every backend (SQLite, PostgreSQL) uses this module.
"""

from __future__ import annotations

import collections
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sidecar.events import Event, JSONValue, json_text

__all__ = ["SHARED_KEYS", "StoredEvent", "StoredBatch", "split_events", "assemble",
           "reassemble", "Unreadable", "encode_holes", "decode_holes", "measure",
           "stored_type"]

SHARED_KEYS = ("metadata", "contact")
"""Keys of an event's ``data`` whose values several events of one change share."""

_NONCE = secrets.token_hex(8)
_PLACEHOLDER = "0"

Hole = tuple[int, str]  # (offset of the placeholder in the own part, part id)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    own: str  # the encoded event, each shared value replaced by ``0``
    holes: tuple[Hole, ...]  # in ascending offset order; () when stored whole


@dataclass(frozen=True, slots=True)
class StoredBatch:
    events: list[StoredEvent]  # one per event, in order
    parts: dict[str, str]  # part id -> its JSON text, each distinct part once

    def part_ids(self, indexes: Sequence[int]) -> set[str]:
        """The parts the events at ``indexes`` refer to."""
        return {part for i in indexes for _, part in self.events[i].holes}


def _part_id(text: str) -> str:
    return "part_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def split_events(events: Sequence[Event]) -> StoredBatch:
    """Every event's own part and holes, and the distinct parts they refer to.

    A value is cut out only where several events hold it (events of one change hold the
    same object): an event that shares nothing, such as the usual delivery of one
    message, is stored whole, at the cost of one encoding.  Each shared value is encoded
    once per distinct object, so the cost is that of the delivery, not of its copies."""
    holders: collections.Counter[int] = collections.Counter(
        id(value) for event in events for key in SHARED_KEYS
        if isinstance(value := event.data.get(key), (dict, list)) and value)
    parts: dict[str, str] = {}
    known: dict[int, tuple[str, JSONValue]] = {}  # id(value) -> (part id, value kept alive)
    stored = [_split(event, parts, known, holders) for event in events]
    return StoredBatch(events=stored, parts=parts)


def _split(event: Event, parts: dict[str, str], known: dict[int, tuple[str, JSONValue]],
           holders: collections.Counter[int]) -> StoredEvent:
    data = event.data
    shared = [key for key in SHARED_KEYS
              if isinstance(data.get(key), (dict, list)) and data[key]
              and holders[id(data[key])] > 1]
    if not shared:
        return StoredEvent(own=json_text(event.to_dict()), holes=())
    sentinels = {key: f"\x00{_NONCE}.{n}\x00" for n, key in enumerate(shared)}
    cut = {key: (sentinels[key] if key in sentinels else value) for key, value in data.items()}
    text = json_text({**event.to_dict(), "data": cut})
    found: list[tuple[int, str, str]] = []  # (offset, token, key)
    for key, sentinel in sentinels.items():
        token = json_text(sentinel)
        at = text.find(token)
        if at < 0 or text.find(token, at + 1) >= 0:
            return StoredEvent(own=json_text(event.to_dict()), holes=())
        found.append((at, token, key))
    found.sort()
    pieces: list[str] = []
    holes: list[Hole] = []
    position = length = 0
    for at, token, key in found:
        pieces.append(text[position:at])
        length += at - position
        holes.append((length, _part_of(data[key], parts, known)))
        pieces.append(_PLACEHOLDER)
        length += len(_PLACEHOLDER)
        position = at + len(token)
    pieces.append(text[position:])
    return StoredEvent(own="".join(pieces), holes=tuple(holes))


def _part_of(value: JSONValue, parts: dict[str, str],
             known: dict[int, tuple[str, JSONValue]]) -> str:
    seen = known.get(id(value))
    if seen is not None and seen[1] is value:
        return seen[0]
    text = json_text(value)
    part = _part_id(text)
    parts.setdefault(part, text)
    known[id(value)] = (part, value)
    return part


def assemble(own: str, holes: Sequence[Hole], parts: Mapping[str, str]) -> bytes:
    """The event's ``encode_event`` bytes from its own part, holes and parts."""
    if not holes:
        return own.encode("utf-8")
    pieces: list[str] = []
    position = 0
    for at, part in holes:
        pieces.append(own[position:at])
        pieces.append(parts[part])
        position = at + len(_PLACEHOLDER)
    pieces.append(own[position:])
    return "".join(pieces).encode("utf-8")


class Unreadable(ValueError):
    """A stored event that cannot be put back together (a part row missing, its holes
    damaged): only damage to the spool outside the sidecar does this.  The worker
    dead-letters such an event instead of stopping on it."""


def reassemble(own: str, holes_text: str | None, parts: Mapping[str, str]) -> bytes:
    """``assemble`` from the stored holes text, raising ``Unreadable`` for a damaged row."""
    try:
        return assemble(own, decode_holes(holes_text), parts)
    except (KeyError, ValueError, TypeError) as exc:
        raise Unreadable(f"stored event cannot be reassembled ({type(exc).__name__}: {exc})"
                         ) from exc


def encode_holes(holes: Sequence[Hole]) -> str | None:
    """The holes as stored beside the own part: None for an event stored whole."""
    return json.dumps([[at, part] for at, part in holes], separators=(",", ":")) if holes \
        else None


def decode_holes(text: str | None) -> list[Hole]:
    if not text:
        return []
    return [(int(at), str(part)) for at, part in json.loads(text)]


def measure(events: Sequence[Event]) -> tuple[int, int]:
    """``(stored, sent)`` for ``events``: the bytes storing them adds (each own part with
    its holes, each distinct part once), and the bytes the upstream receives for them
    (each event whole: a shared part in every event that holds it)."""
    batch = split_events(events)
    part_bytes = {part: len(text.encode("utf-8")) for part, text in batch.parts.items()}
    own = [len(e.own.encode("utf-8")) for e in batch.events]
    stored = (sum(own) + sum(len(encode_holes(e.holes) or "") for e in batch.events)
              + sum(len(part) + size for part, size in part_bytes.items()))
    sent = sum(own) + sum(part_bytes[part] - len(_PLACEHOLDER)
                          for e in batch.events for _, part in e.holes)
    return stored, sent


def stored_type(own: str | bytes | None) -> str:
    """An event's ``type`` from its own stored part (valid JSON with the shared parts cut
    out), for listings; ``?`` when it cannot be read."""
    try:
        value = json.loads(own or b"").get("type")
    except (ValueError, AttributeError):
        return "?"
    return value if isinstance(value, str) else "?"
