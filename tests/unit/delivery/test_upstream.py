"""UpstreamClient: Standard Webhooks headers, 2xx judgement, Retry-After parsing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import pytest

from sidecar.clock import ManualClock
from sidecar.delivery.transport import MockTransport, UpstreamRequest, UpstreamResponse
from sidecar.delivery.upstream import UpstreamClient
from sidecar.errors import UpstreamUnavailable
from sidecar.events import Event, batch_id
from sidecar.secret import Secret

NOW = 1_800_000_000.0


class Answering(MockTransport):
    """Answers every POST with one status, keeping what was sent."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.sent: list[tuple[bytes, dict[str, str]]] = []

        def answer(request: UpstreamRequest) -> UpstreamResponse:
            self.sent.append((request.body, dict(request.headers)))
            return UpstreamResponse(status, headers or {})

        super().__init__(answer)


def event(n: int) -> Event:
    return Event(id=f"evt_{n}", type="whatsapp.security", field="security", waba_id="1",
                 phone_number_id=None, occurred_at="2027-01-15T08:00:00Z",
                 received_at="2027-01-15T08:00:00.000Z", data={"event": "PIN_CHANGED"})


@pytest.mark.parametrize("secret, key", [
    ("plain-secret", b"plain-secret"),
    ("whsec_" + base64.b64encode(b"\x01\x02raw key").decode(), b"\x01\x02raw key"),
])
def test_standard_webhooks_signature(secret: str, key: bytes) -> None:
    transport = Answering(204)
    client = UpstreamClient("http://up/events", timeout_s=1, signing_secret=Secret(secret),
                            transport=transport, clock=ManualClock(NOW))
    asyncio.run(client.send([event(1)], as_array=False))
    body, headers = transport.sent[0]
    assert headers["webhook-id"] == "evt_1" and headers["webhook-timestamp"] == str(int(NOW))
    mac = hmac.new(key, f"evt_1.{int(NOW)}.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_batches_are_arrays_with_a_derived_id() -> None:
    transport = Answering(200)
    client = UpstreamClient("http://up/events", timeout_s=1, signing_secret=Secret("s"),
                            transport=transport, clock=ManualClock(NOW))
    asyncio.run(client.send([event(1), event(2)], as_array=True))
    body, headers = transport.sent[0]
    assert body.startswith(b'[{"id":"evt_1"') and b'{"id":"evt_2"' in body
    assert headers["webhook-id"] == batch_id(["evt_1", "evt_2"])


def test_non_2xx_is_unavailable_with_status_and_retry_after() -> None:
    client = UpstreamClient("http://up/events", timeout_s=1, signing_secret=None,
                            transport=Answering(429, {"retry-after": "7"}),
                            clock=ManualClock(NOW))
    with pytest.raises(UpstreamUnavailable) as info:
        asyncio.run(client.send([event(1)], as_array=False))
    assert info.value.status == 429 and info.value.retry_after_s == 7.0
