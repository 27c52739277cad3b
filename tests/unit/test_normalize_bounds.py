"""What one delivery may add to the spool: the event-count and size bounds, the whole-
delivery quarantine past either, and its replay."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pytest

from sidecar.checks.payload import parse_envelopes
from sidecar.errors import BadPayload
from sidecar.events import Event, content_event_id, json_text
from sidecar.normalize import (
    DELIVERY_FIELD,
    STORED_BYTES_ALLOWANCE,
    STORED_BYTES_PER_BODY_BYTE,
    Bounds,
    normalize,
    renormalize,
)
from sidecar.spool.parts import measure

RECEIVED = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
META = {"display_phone_number": "15557654321", "phone_number_id": "112233445566778"}


def delivery(*changes: tuple[str, dict[str, Any]], waba: str = "1") -> dict[str, Any]:
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba, "changes": [{"field": f, "value": v} for f, v in changes]}]}


def messages(n: int, **value: Any) -> tuple[str, dict[str, Any]]:
    return ("messages", {"metadata": META, **value, "messages": [
        {"from": "1", "id": f"wamid.{i}", "timestamp": "1775000000", "type": "text",
         "text": {"body": "hello there"}} for i in range(n)]})


def bounded(body: Any, *, max_events: int = 1000,
            measured: Any = measure) -> tuple[Any, Bounds]:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return parse_envelopes(raw), Bounds(max_events=max_events, body_bytes=len(raw),
                                        measure=measured)


def never_measured(events: Sequence[Event]) -> tuple[int, int]:
    raise AssertionError("the size must not be measured past the count bound")


def test_a_delivery_within_both_bounds_is_normalized_as_usual() -> None:
    envelopes, bounds = bounded(delivery(messages(1000)))
    result = normalize(envelopes, received_at=RECEIVED, bounds=bounds)
    assert len(result.events) == 1000 and result.quarantined == []
    assert result == normalize(envelopes, received_at=RECEIVED)


def test_past_the_event_count_the_delivery_is_quarantined_whole() -> None:
    body = delivery(messages(600), ("account_update", {"event": "X"}), messages(400))
    envelopes, bounds = bounded(body, measured=never_measured)
    result = normalize(envelopes, received_at=RECEIVED, bounds=bounds)
    assert result.events == []
    (whole,) = result.quarantined
    assert whole.field == DELIVERY_FIELD and whole.waba_id == "1" and whole.entry_time is None
    assert whole.value == {"envelopes": envelopes, "unknown_fields": "forward"}
    assert whole.reason == ("delivery holds 1001 events, more than "
                            "limits.max_events_per_delivery (1000)")
    assert whole.id == content_event_id("1", DELIVERY_FIELD, None, envelopes)


def test_dropped_unknown_fields_do_not_count() -> None:
    body = delivery(messages(1000), *[("brand_new", {"n": i}) for i in range(5)])
    envelopes, bounds = bounded(body)
    assert len(normalize(envelopes, received_at=RECEIVED, unknown_fields="drop",
                         bounds=bounds).events) == 1000
    forwarded = normalize(envelopes, received_at=RECEIVED, bounds=bounds)
    assert forwarded.events == [] and len(forwarded.quarantined) == 1


def test_sixty_thousand_changes_are_counted_not_built() -> None:
    body = delivery(*[("account_review_update", {"decision": "APPROVED", "n": i})
                      for i in range(60_000)])
    envelopes, bounds = bounded(body, measured=never_measured)
    started = time.perf_counter()
    result = normalize(envelopes, received_at=RECEIVED, bounds=bounds)
    elapsed = time.perf_counter() - started
    assert result.events == [] and len(result.quarantined) == 1
    assert elapsed < 2.0  # a count and one content hash, not 60,000 events


def test_past_the_size_bound_the_delivery_is_quarantined_whole() -> None:
    # 1000 elements of a dozen bytes: each event's own envelope (~280 bytes) is far more
    # than its element's share of the body.
    tiny = [{"id": f"m{i}"} for i in range(1000)]
    envelopes, bounds = bounded(delivery(("messages", {"messages": tiny})))
    stored, _ = measure(normalize(envelopes, received_at=RECEIVED).events)
    assert stored > bounds.max_bytes
    (whole,) = normalize(envelopes, received_at=RECEIVED, bounds=bounds).quarantined
    assert whole.field == DELIVERY_FIELD
    assert whole.reason.startswith("delivery would add ")
    assert f"than the {bounds.max_bytes} allowed" in whole.reason


def test_the_size_bound_is_k_times_the_body_plus_an_allowance() -> None:
    bounds = Bounds(max_events=1, body_bytes=1000, measure=measure)
    assert bounds.max_bytes == STORED_BYTES_PER_BODY_BYTE * 1000 + STORED_BYTES_ALLOWANCE
    assert 4 <= STORED_BYTES_PER_BODY_BYTE <= 10


def test_a_shared_contact_is_stored_once_and_sent_with_every_message() -> None:
    contact = {"wa_id": "1", "profile": {"name": "c" * 500}}
    envelopes, bounds = bounded(delivery(messages(200, contacts=[contact])))
    result = normalize(envelopes, received_at=RECEIVED, bounds=bounds)
    assert len(result.events) == 200 and result.quarantined == []
    stored, sent = measure(result.events)
    assert sent == sum(len(json_text(e.to_dict()).encode()) for e in result.events)
    assert stored < sent - 150 * 500  # the contact once, not 200 times


def test_a_big_part_shared_by_many_events_is_bounded_as_sent() -> None:
    # Stored once, this contact would be sent 1,000 times: ~100 MB upstream, and as much
    # in the delivering process's memory, for one 120 KB delivery.
    contact = {"wa_id": "1", "profile": {"name": "c" * 100_000}}
    envelopes, bounds = bounded(delivery(messages(1000, contacts=[contact])))
    stored, sent = measure(normalize(envelopes, received_at=RECEIVED).events)
    assert stored < bounds.max_bytes < sent
    (whole,) = normalize(envelopes, received_at=RECEIVED, bounds=bounds).quarantined
    assert whole.field == DELIVERY_FIELD
    assert whole.reason == (f"delivery would send {sent} bytes upstream, more than the "
                            f"{bounds.max_bytes} allowed for its {bounds.body_bytes}-byte body")


def test_a_quarantined_delivery_replays_to_the_events_it_would_have_had() -> None:
    body = delivery(messages(3), ("brand_new", {"x": 1}))
    envelopes, bounds = bounded(body, max_events=2)
    (whole,) = normalize(envelopes, received_at=RECEIVED, bounds=bounds).quarantined
    stored = json.loads(json.dumps(whole.value, sort_keys=True))  # as a spool keeps it
    replayed = renormalize(type(whole)(**{**_fields(whole), "value": stored}), RECEIVED)
    assert [e.id for e in replayed] == \
        [e.id for e in normalize(envelopes, received_at=RECEIVED).events]


def test_a_replayed_delivery_keeps_its_unknown_field_policy() -> None:
    envelopes, bounds = bounded(delivery(messages(3), ("brand_new", {"x": 1})), max_events=2)
    (whole,) = normalize(envelopes, received_at=RECEIVED, unknown_fields="drop",
                         bounds=bounds).quarantined
    assert [e.type for e in renormalize(whole, RECEIVED)] == ["whatsapp.message"] * 3


def test_a_replayed_delivery_with_a_broken_change_fails_unless_forced() -> None:
    broken = ("messages", {"metadata": META, "messages": [{"from": "1"}]})
    envelopes, bounds = bounded(delivery(messages(2), broken), max_events=1)
    (whole,) = normalize(envelopes, received_at=RECEIVED, bounds=bounds).quarantined
    with pytest.raises(BadPayload, match=r"1 change\(s\) of the delivery still cannot become "
                                         r"events; the first: messages: messages\[0\].id is"):
        renormalize(whole, RECEIVED)
    forced = renormalize(whole, RECEIVED, force=True)
    assert [e.type for e in forced] == ["whatsapp.message"] * 2 + ["whatsapp.messages"]
    assert forced[-1].data == broken[1]


def test_a_value_that_is_no_delivery_is_refused_on_replay() -> None:
    envelopes, bounds = bounded(delivery(messages(2)), max_events=1)
    (whole,) = normalize(envelopes, received_at=RECEIVED, bounds=bounds).quarantined
    with pytest.raises(BadPayload, match="not a quarantined delivery"):
        renormalize(type(whole)(**{**_fields(whole), "value": {"envelopes": "x"}}), RECEIVED)


def _fields(change: Any) -> dict[str, Any]:
    return {name: getattr(change, name) for name in change.__slots__}


def test_a_delivery_of_one_event_is_not_measured() -> None:
    # One event holds only substrings of its body: it can never pass the size bound, so
    # the common single message or status is not encoded a second time to check it.
    envelopes, bounds = bounded(delivery(messages(1)),
                                measured=lambda events: pytest.fail("measured"))
    assert len(normalize(envelopes, received_at=RECEIVED, bounds=bounds).events) == 1
