"""Realistic sample deliveries, one per known field, for ``send-test``, the demo and tests.

Why here and not under tests: the CLI sends them to a running sidecar to prove the path
end to end.  The shapes are Meta's (its webhook reference pages, as docs/events.md
describes them), the values made up, kept compact.  Every call returns a fresh deep copy, so a
caller may change what it gets; ``unique`` makes the derived event ids differ so that
repeated sends are not dropped as duplicates.
"""

from __future__ import annotations

import copy

from sidecar.checks.schemas import SPLIT_ARRAYS
from sidecar.events import JSONValue
from sidecar.normalize import SPLIT_FIELDS

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


def _messaging(**arrays: JSONValue) -> dict[str, JSONValue]:
    """A messaging-style value: the business number's ``metadata`` and the arrays."""
    return {"messaging_product": "whatsapp", "metadata": dict(_METADATA), **arrays}


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

META_DOC_EXAMPLE: list[dict[str, JSONValue]] = [{
    "object": "whatsapp_business_account",
    "entry": [{
        "id": "0",
        "time": 1674864290,
        "changes": [{
            "field": "phone_number_name_update",
            "value": {
                "display_phone_number": "16505551111",
                "decision": "APPROVED",
                "requested_verified_name": "WhatsApp",
                "rejection_reason": None,
            },
        }],
    }],
}]
"""The example of Meta's documentation that the dashboard's test button sends: a JSON
array holding one envelope, entry id ``"0"``, a ``phone_number_name_update``.
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
    # Newer fields (Calling API, Coexistence, Groups API, business-scoped user ids, ...).
    "calls": _envelope("calls", _messaging(
        contacts=[{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234",
                   "user_id": "US.13491208655302741918"}],
        calls=[{"id": "wacid.HBgLMTY1MDU1NTEyMzQVAgARGBJDQUxMX1NBTVBMRV8xAA==",
                "from": "16505551234", "to": "15550783881", "event": "connect",
                "direction": "USER_INITIATED", "timestamp": "1749416600",
                "session": {"sdp_type": "offer", "sdp": "v=0\r\n"}}])),
    "message_echoes": _envelope("message_echoes", _messaging(
        message_echoes=[{"from": "15550783881", "to": "16505551234",
                         "id": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJBR0VOVF9FQ0hPXzEA",
                         "timestamp": "1749416700", "type": "text",
                         "text": {"body": "Your order ships today."}}])),
    "history": _envelope("history", _messaging(
        history=[{"metadata": {"phase": 0, "chunk_order": 1, "progress": 100},
                  "threads": [{"id": "16505551234", "messages": [
                      {"from": "16505551234", "id": "wamid.HISTORY_SAMPLE_1",
                       "timestamp": "1749000000", "type": "text", "text": {"body": "Hello"},
                       "history_context": {"status": "READ"}}]}]}])),
    "smb_app_state_sync": _envelope("smb_app_state_sync", _messaging(
        state_sync=[{"type": "contact", "action": "add",
                     "contact": {"full_name": "Sheena Nelson", "first_name": "Sheena",
                                 "phone_number": "16505551234"},
                     "metadata": {"timestamp": "1749416800"}}])),
    "account_settings_update": _envelope("account_settings_update", {
        "messaging_product": "whatsapp", "timestamp": "1749416900",
        "type": "phone_number_settings",
        "phone_number_settings": {"phone_number_id": "106540352242922",
                                  "calling": {"status": "ENABLED"}}}),
    "message_template_components_update": _envelope("message_template_components_update", {
        "message_template_id": 1689556908129835, "message_template_name": "abandoned_cart",
        "message_template_language": "en",
        "message_template_element": "You left something in your cart, {{1}}!"},
        time=1751250234),
    "group_lifecycle_update": _envelope("group_lifecycle_update", _messaging(
        groups=[{"timestamp": "1749417000", "group_id": "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MQ",
                 "type": "group_create", "request_id": "req-1", "subject": "Orders"}])),
    "group_participants_update": _envelope("group_participants_update", _messaging(
        groups=[{"timestamp": "1749417100", "group_id": "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MQ",
                 "type": "group_participants_add", "reason": "invite_link",
                 "added_participants": [{"wa_id": "16505551234"}]}])),
    "group_settings_update": _envelope("group_settings_update", _messaging(
        groups=[{"timestamp": "1749417200", "group_id": "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MQ",
                 "type": "group_settings_update", "request_id": "req-2",
                 "group_subject": {"text": "Orders 2026", "update_successful": True}}])),
    "group_status_update": _envelope("group_status_update", _messaging(
        groups=[{"timestamp": "1749417300", "group_id": "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MQ",
                 "type": "group_suspend"}])),
    "payment_configuration_update": _envelope("payment_configuration_update", {
        "configuration_name": "upi-live", "provider_name": "razorpay",
        "provider_mid": "acc_SAMPLE", "status": "Active",
        "created_timestamp": 1749000000, "updated_timestamp": 1749417400}, time=1749417400),
    "partner_solutions": _envelope("partner_solutions", {
        "event": "SOLUTION_CREATED", "solution_id": "987654321012345",
        "solution_status": "INITIATED"}, time=1749417500),
    "automatic_events": _envelope("automatic_events", _messaging(
        automatic_events=[{"id": "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJQVVJDSEFTRV8xAA==",
                           "event_name": "Purchase", "timestamp": "1749417600",
                           "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
                           "custom_data": {"currency": "USD", "value": 25}}])),
    "phone_number_username_update": _envelope("phone_number_username_update", {
        "display_phone_number": "15550783881", "decision": "APPROVED",
        "requested_username": "luckyshrub"}, time=1749417700),
    "business_username_update": _envelope("business_username_update", {
        "display_phone_number": "15550783881", "decision": "APPROVED",
        "requested_username": "luckyshrub"}, time=1749417800),
    "standby": _envelope("standby", _messaging(
        contacts=[{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
        messages=[{"from": "16505551234", "id": "wamid.STANDBY_SAMPLE_1",
                   "timestamp": "1749417900", "type": "text", "text": {"body": "Hi agent"}}])),
    "messaging_handovers": _envelope("messaging_handovers", _messaging(
        messaging_handovers=[{"recipient": {"wa_id": "16505551234"},
                              "timestamp": "1749418000",
                              "pass_thread_control": {"previous_owner_app_id": "123",
                                                      "new_owner_app_id": "456"}}])),
    "consumer_profile": _envelope("consumer_profile", _messaging(
        contacts=[{"profile": {"name": "Sheena N."}, "wa_id": "16505551234"}])),
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
            if change["field"] not in SPLIT_FIELDS:
                value[_UNIQUE_KEY] = unique
                continue
            for key in SPLIT_ARRAYS:
                for element in value.get(key, []):
                    if "id" in element:
                        element["id"] = f"{element['id']}.{unique}"
                    else:
                        element[_UNIQUE_KEY] = unique
