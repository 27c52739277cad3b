"""What the upstream receives verifies with the libraries an operator's backend uses:
Standard Webhooks' own verifier and Svix's, given the configured secret as they take it."""

from __future__ import annotations

import base64
import json

import pytest
import standardwebhooks
import svix.webhooks

from conftest import SIGNING_SECRET, running_sink
from sidecar.tools.samples import sample_status_delivery

WHSEC = "whsec_" + base64.b64encode(b"interop-key-" + bytes(range(20))).decode()


def _delivery_of(n: int, unique: str) -> bytes:
    delivery = sample_status_delivery(unique=unique)
    value = delivery["entry"][0]["changes"][0]["value"]
    first = value["statuses"][0]
    value["statuses"] = [dict(first, id=f"{first['id']}.{i}") for i in range(n)]
    return json.dumps(delivery).encode()


@pytest.mark.parametrize("batch_max", [1, 4])
def test_deliveries_verify_with_standard_webhooks_and_svix(start_sidecar, batch_max):
    with running_sink(WHSEC) as upstream:
        sidecar = start_sidecar(upstream_url=upstream.url, signing_secret=WHSEC,
                                upstream_extra=f"batch_max: {batch_max}\n")
        assert sidecar.post(_delivery_of(4, f"interop-{batch_max}")).status_code == 200
        events = upstream.wait_for(4, timeout_s=10)
        assert len({e["id"] for e in events}) == 4
        for request in upstream.requests:
            headers = dict(request.headers)
            body = json.loads(request.body)
            assert standardwebhooks.Webhook(WHSEC).verify(request.body, headers) == body
            svix.webhooks.Webhook(WHSEC).verify(request.body, headers)  # raises if not
            if batch_max > 1:
                assert isinstance(body, list)
            # The signature covers the body: one byte changed, both refuse it.
            tampered = request.body.replace(b"whatsapp.status", b"whatsapp.Status", 1)
            assert tampered != request.body
            with pytest.raises(standardwebhooks.WebhookVerificationError):
                standardwebhooks.Webhook(WHSEC).verify(tampered, headers)
            with pytest.raises(svix.webhooks.WebhookVerificationError):
                svix.webhooks.Webhook(WHSEC).verify(tampered, headers)
        if batch_max > 1:
            assert any(len(json.loads(r.body)) > 1 for r in upstream.requests)


def test_a_secret_without_the_prefix_is_its_own_bytes(start_sidecar, sink):
    """A plain secret is the key as it is: the verifiers take it as bytes (given as a
    string, they would base64-decode it)."""
    sidecar = start_sidecar()
    assert sidecar.post(_delivery_of(1, "interop-plain")).status_code == 200
    sink.wait_for(1, timeout_s=10)
    assert sink.requests
    for request in sink.requests:
        headers = dict(request.headers)
        standardwebhooks.Webhook(SIGNING_SECRET.encode()).verify(request.body, headers)
        svix.webhooks.Webhook(SIGNING_SECRET.encode()).verify(request.body, headers)
