"""Realistic sample deliveries, one per known field, for ``send-test``, the demo and tests.

Why here and not under tests: the CLI sends them to a running sidecar to prove the path
end to end.  The shapes are Meta's (reference/meta-webhooks.md §5: pywa fixtures and
Meta's reference examples), kept compact.  Every call returns a fresh deep copy, so a
caller may change what it gets; ``unique`` makes the derived event ids differ so that
repeated sends are not dropped as duplicates.
"""

from __future__ import annotations

import copy

from sidecar.events import JSONValue

__all__ = [
    "SAMPLE_FIELDS",
    "META_DOC_EXAMPLE",
    "sample_delivery",
    "sample_status_delivery",
]

_WABA_ID = "102290129340398"
_METADATA = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}
_UNIQUE_KEY = "sample_token"  # an unknown key: allowed by every schema, kept as is


def _envelope(field: str, value: dict[str, JSONValue], *, time: int | None = None
              ) -> dict[str, JSONValue]:
    entry: dict[str, JSONValue] = {"id": _WABA_ID}
    if time is not None:
        entry["time"] = time
    entry["changes"] = [{"field": field, "value": value}]
    return {"object": "whatsapp_business_account", "entry": [entry]}


_INBOUND_TEXT = _envelope(
    "messages",
    {
        "messaging_product": "whatsapp",
        "metadata": dict(_METADATA),
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
        "messages": [
            {
                "from": "16505551234",
                "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                "timestamp": "1749416383",
                "type": "text",
                "text": {"body": "Does it come in another color?"},
            }
        ],
    },
)

META_DOC_EXAMPLE: list[dict[str, JSONValue]] = [copy.deepcopy(_INBOUND_TEXT)]
"""Meta's overview sample in the JSON-array form its documentation shows.
Treat as read-only; ``copy.deepcopy`` it before changing anything."""

_STATUS = _envelope(
    "messages",
    {
        "messaging_product": "whatsapp",
        "metadata": dict(_METADATA),
        "statuses": [
            {
                "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI2QjM3NjNCMjdBNkY4QkE5RjQA",
                "status": "delivered",
                "timestamp": "1749416400",
                "recipient_id": "16505551234",
                "pricing": {"billable": True, "pricing_model": "PMP", "category": "utility"},
            }
        ],
    },
)

_SAMPLES: dict[str, dict[str, JSONValue]] = {
    "messages": _INBOUND_TEXT,
    "account_review_update": _envelope(
        "account_review_update", {"decision": "APPROVED"}, time=1751247548
    ),
    "account_update": _envelope(
        "account_update",
        {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "ADULT"}},
        time=1743451903,
    ),
    "business_capability_update": _envelope(
        "business_capability_update",
        {
            "max_daily_conversations_per_business": 2000,
            "max_phone_numbers_per_business": 2,
            "max_phone_numbers_per_waba": 2,
        },
        time=1751247548,
    ),
    "message_template_status_update": _envelope(
        "message_template_status_update",
        {
            "event": "APPROVED",
            "message_template_id": 1689556908129835,
            "message_template_name": "abandoned_cart",
            "message_template_language": "en",
            "reason": "NONE",
            "message_template_category": "MARKETING",
        },
        time=1751247548,
    ),
    "phone_number_name_update": _envelope(
        "phone_number_name_update",
        {
            "display_phone_number": "15550783881",
            "decision": "APPROVED",
            "requested_verified_name": "Lucky Shrub",
            "rejection_reason": "NONE",
        },
        time=1751247548,
    ),
    "phone_number_quality_update": _envelope(
        "phone_number_quality_update",
        {"display_phone_number": "15550783881", "event": "UPGRADE", "old_limit": "TIER_1K"},
        time=1751247548,
    ),
    "security": _envelope(
        "security",
        {"display_phone_number": "15550783881", "event": "PIN_CHANGED",
         "requester": "2553428354843224"},
        time=1751247548,
    ),
    "template_category_update": _envelope(
        "template_category_update",
        {
            "message_template_id": 12345678,
            "message_template_name": "my_message_template",
            "message_template_language": "en",
            "new_category": "MARKETING",
        },
        time=1750344882,
    ),
    "message_template_quality_update": _envelope(
        "message_template_quality_update",
        {
            "previous_quality_score": "GREEN",
            "new_quality_score": "YELLOW",
            "message_template_id": 806312974732579,
            "message_template_name": "welcome_template",
            "message_template_language": "en_US",
        },
        time=1674864290,
    ),
    "account_alerts": _envelope(
        "account_alerts",
        {
            "entity_type": "BUSINESS",
            "entity_id": "506914307656634",
            "alert_info": {
                "alert_severity": "WARNING",
                "alert_status": "ACTIVE",
                "alert_type": "INCREASED_CAPABILITIES_ELIGIBILITY_NEED_MORE_INFO",
                "alert_description": "Additional verification is required for your business.",
            },
        },
        time=1751247548,
    ),
    "user_preferences": _envelope(
        "user_preferences",
        {
            "messaging_product": "whatsapp",
            "metadata": dict(_METADATA),
            "contacts": [{"profile": {"name": "Test Name"}, "wa_id": "16505551234"}],
            "user_preferences": [
                {
                    "wa_id": "16505551234",
                    "detail": "User requested to stop marketing messages",
                    "category": "marketing_messages",
                    "value": "stop",
                    "timestamp": 1731705721,
                }
            ],
        },
    ),
    "smb_message_echoes": _envelope(
        "smb_message_echoes",
        {
            "messaging_product": "whatsapp",
            "metadata": dict(_METADATA),
            "message_echoes": [
                {
                    "from": "15550783881",
                    "to": "16505551234",
                    "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJFQ0hPX1NBTVBMRV9JRF8xAA==",
                    "timestamp": "1749416500",
                    "type": "text",
                    "text": {"body": "Sent from the WhatsApp Business app"},
                }
            ],
        },
    ),
    "flows": _envelope(
        "flows",
        {
            "event": "FLOW_STATUS_CHANGE",
            "message": "Flow Webhook Test changed status from DRAFT to PUBLISHED",
            "flow_id": "1234567890",
            "old_status": "DRAFT",
            "new_status": "PUBLISHED",
        },
        time=1751247548,
    ),
}

SAMPLE_FIELDS: tuple[str, ...] = tuple(_SAMPLES)
"""The known fields, in a stable order (``messages`` first)."""


def sample_delivery(field: str, *, unique: str | None = None) -> dict[str, JSONValue]:
    """A fresh copy of the sample envelope for ``field``.

    With ``unique``, the derived event ids differ from the plain sample's: wamids are
    suffixed for ``messages``, and other values get the token under an extra key."""
    if field not in _SAMPLES:
        raise ValueError(f"no sample for field {field!r}; known: {', '.join(SAMPLE_FIELDS)}")
    envelope = copy.deepcopy(_SAMPLES[field])
    if unique is not None:
        _make_unique(envelope, unique)
    return envelope


def sample_status_delivery(*, unique: str | None = None) -> dict[str, JSONValue]:
    """A fresh copy of a ``messages`` change carrying one status (``delivered``)."""
    envelope = copy.deepcopy(_STATUS)
    if unique is not None:
        _make_unique(envelope, unique)
    return envelope


def _make_unique(envelope: dict[str, JSONValue], unique: str) -> None:
    for entry in envelope["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            if change["field"] != "messages":
                value[_UNIQUE_KEY] = unique
                continue
            for element in value.get("messages", []) + value.get("statuses", []):
                element["id"] = f"{element['id']}.{unique}"
