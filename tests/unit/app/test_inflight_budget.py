"""The in-flight body budget: a body is paid for before it is read (a declared length at
once, a chunked body chunk by chunk); past the budget the answer is 503 with the body
unread; the budget is whole again once each request is answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from sidecar.app.budget import BodyBudget
from sidecar.app.public import RequestSettings, build_public_app
from sidecar.checks.signature import SignatureVerifier, sign
from sidecar.errors import Overloaded
from sidecar.metrics import Metrics
from sidecar.secret import Secret

SECRET = Secret("s3cret-value")
BODY = (b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":'
        b'[{"field":"x","value":{}}]}]}')


class SlowIngest:
    """Holds every accepted delivery until released, as a slow commit would."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.accepted = 0

    async def accept(self, normalized: object) -> None:
        await self.gate.wait()
        self.accepted += 1


def _client(budget: BodyBudget, ingest: SlowIngest, metrics: Metrics) -> httpx.AsyncClient:
    settings = RequestSettings(SignatureVerifier([SECRET]), Secret("tok"), "forward")
    app = build_public_app(path="/hook", settings=lambda: settings, ingest=ingest,
                           metrics=metrics, max_body_bytes=4096, body_timeout_s=5,
                           budget=budget)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="https://sidecar.test")


def _headers() -> dict[str, str]:
    return {"x-hub-signature-256": sign(SECRET, BODY)}


async def test_a_body_past_the_budget_is_503_and_the_budget_comes_back() -> None:
    budget, ingest, metrics = BodyBudget(len(BODY) * 2), SlowIngest(), Metrics()
    async with _client(budget, ingest, metrics) as c:
        held = [asyncio.create_task(c.post("/hook", content=BODY, headers=_headers()))
                for _ in range(2)]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if budget.in_use == 2 * len(BODY):
                break
        refused = await c.post("/hook", content=BODY, headers=_headers())
        assert refused.status_code == 503 and refused.headers["connection"] == "close"
        assert "retry later" in refused.json()["error"]
        ingest.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert budget.in_use == 0
        assert (await c.post("/hook", content=BODY, headers=_headers())).status_code == 200
    text = metrics.render().decode()
    assert 'sidecar_requests_total{outcome="overloaded"} 1.0' in text


async def test_a_chunked_body_is_paid_for_chunk_by_chunk() -> None:
    budget, ingest = BodyBudget(len(BODY) - 1), SlowIngest()
    ingest.gate.set()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(BODY), 16):
            yield BODY[i:i + 16]

    async with _client(budget, ingest, Metrics()) as c:
        r = await c.post("/hook", content=chunks(), headers=_headers())
    assert r.status_code == 503 and budget.in_use == 0 and ingest.accepted == 0


def test_drained_is_called_once_after_a_burst() -> None:
    drained: list[int] = []
    budget = BodyBudget(100, on_drained=lambda: drained.append(1), drained_after=50)
    a, b = budget.hold(), budget.hold()
    a.take(30)
    b.take(30)
    with pytest.raises(Overloaded):
        budget.hold().take(41)
    a.release()
    assert drained == []
    b.release()
    b.release()  # idempotent
    assert drained == [1] and budget.in_use == 0
    small = budget.hold()
    small.take(10)
    small.release()
    assert drained == [1]  # no burst, no trim
