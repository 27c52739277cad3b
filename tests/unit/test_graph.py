"""GraphClient against httpx.MockTransport: shapes, error classes, bounded backoff."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from sidecar.errors import (
    GraphAuthError,
    GraphError,
    GraphPermissionError,
    GraphRateLimited,
    UsageError,
)
from sidecar.graph import GraphClient, SubscribedApp, parse_buc_wait_s
from sidecar.secret import Secret

TOKEN = "EAAtok_SECRET_123"
BASE = "https://graph.example.test"
Handler = Callable[[httpx.Request], httpx.Response]


def graph_error(code: int, subcode: int | None = None, status: int = 400,
                headers: dict[str, str] | None = None, message: str = "boom") -> httpx.Response:
    error: dict[str, object] = {"message": message, "type": "OAuthException", "code": code,
                                "fbtrace_id": "AbC"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return httpx.Response(status, json={"error": error}, headers=headers)


def buc(minutes: float) -> dict[str, str]:
    return {"X-Business-Use-Case-Usage": json.dumps(
        {"123": [{"type": "whatsapp_business_management", "call_count": 100,
                  "estimated_time_to_regain_access": minutes}]})}


class Recorder:
    def __init__(self, responses: list[httpx.Response]) -> None:
        self.responses = responses
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        index = min(len(self.requests), len(self.responses)) - 1
        return self.responses[index]


def make_client(handler: Handler, token: str = TOKEN,
                **kwargs: object) -> tuple[GraphClient, list[float], list[str]]:
    sleeps: list[float] = []
    waits: list[str] = []
    client = GraphClient(BASE, "v24.0", Secret(token), transport=httpx.MockTransport(handler),
                         sleep=sleeps.append, on_wait=waits.append, **kwargs)  # type: ignore[arg-type]
    return client, sleeps, waits


def assert_no_token(text: str) -> None:
    assert TOKEN not in text


# ---------------------------------------------------------------------- success


def test_list_parses_apps_and_sends_bearer() -> None:
    rec = Recorder([httpx.Response(200, json={"data": [
        {"whatsapp_business_api_data": {"id": "111", "link": "https://l", "name": "App"}},
        {"whatsapp_business_api_data": {"id": 222, "name": "Two"},
         "override_callback_uri": "https://hook.example/w"},
    ]})])
    client, _, _ = make_client(rec)
    apps = client.list_subscribed_apps("123")
    assert apps == [SubscribedApp("111", "App", "https://l", None),
                    SubscribedApp("222", "Two", "", "https://hook.example/w")]
    req = rec.requests[0]
    assert req.method == "GET"
    assert str(req.url) == f"{BASE}/v24.0/123/subscribed_apps"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("success", [True, "true"])
def test_subscribe_accepts_both_success_forms(success: object) -> None:
    rec = Recorder([httpx.Response(200, json={"success": success})])
    client, _, _ = make_client(rec)
    client.subscribe("123")
    assert rec.requests[0].method == "POST"
    assert rec.requests[0].content == b""


def test_subscribe_with_override_sends_json_body() -> None:
    rec = Recorder([httpx.Response(200, json={"success": True})])
    client, _, _ = make_client(rec)
    client.subscribe("123", override_callback_uri="https://h/w", verify_token=Secret("vt"))
    assert json.loads(rec.requests[0].content) == {"override_callback_uri": "https://h/w",
                                                   "verify_token": "vt"}


def test_unsubscribe_uses_delete() -> None:
    rec = Recorder([httpx.Response(200, json={"success": True})])
    client, _, _ = make_client(rec)
    client.unsubscribe("123")
    assert rec.requests[0].method == "DELETE"


@pytest.mark.parametrize("body", [{"success": False}, {"success": "false"}, {}, [1], "true"])
def test_unconfirmed_success_is_graph_error(body: object) -> None:
    client, _, _ = make_client(Recorder([httpx.Response(200, json=body)]))
    with pytest.raises(GraphError) as info:
        client.unsubscribe("123")
    assert type(info.value) is GraphError


@pytest.mark.parametrize("body", [{}, {"data": {}}, {"data": [{}]},
                                  {"data": [{"whatsapp_business_api_data": {"name": "x"}}]}])
def test_unexpected_list_shape_is_graph_error(body: object) -> None:
    client, _, _ = make_client(Recorder([httpx.Response(200, json=body)]))
    with pytest.raises(GraphError, match="unexpected Graph API answer"):
        client.list_subscribed_apps("123")


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("code", "cls"), [
    (190, GraphAuthError), (10, GraphPermissionError), (200, GraphPermissionError),
    (299, GraphPermissionError), (100, GraphError), (1, GraphError)])
def test_error_codes_are_classified(code: int, cls: type[GraphError]) -> None:
    client, sleeps, _ = make_client(Recorder([graph_error(code, 463)]))
    with pytest.raises(GraphError) as info:
        client.list_subscribed_apps("123")
    assert type(info.value) is cls
    assert str(info.value) == f"Graph API error {code}/463 (OAuthException): boom [fbtrace_id AbC]"
    assert sleeps == []


def test_token_echoed_by_graph_is_masked_and_long_message_truncated() -> None:
    message = f"Invalid token {TOKEN} " + "x" * 1000
    client, _, _ = make_client(Recorder([graph_error(190, message=message)]))
    with pytest.raises(GraphAuthError) as info:
        client.list_subscribed_apps("123")
    text = str(info.value)
    assert_no_token(text)
    assert "***" in text and len(text) < 300


@pytest.mark.parametrize(("secret", "message", "shown"), [
    ("tok", "bad token", "bad token"),                    # a short token inside a word stays
    ("tok", "bad token tok.", "bad token ***."),          # standing alone it is masked
    ("tok", "url?access_token=tok&x=1", "url?access_token=***&x=1"),
    (TOKEN, f"x{TOKEN}y", "x***y"),                        # a long one is masked anywhere
])
def test_masking_hides_the_token_without_mangling_graph_words(secret: str, message: str,
                                                              shown: str) -> None:
    client, _, _ = make_client(Recorder([graph_error(190, message=message)]), token=secret)
    with pytest.raises(GraphAuthError) as info:
        client.list_subscribed_apps("123")
    assert f"): {shown} [fbtrace_id" in str(info.value)


@pytest.mark.parametrize(("response", "needle"), [
    (httpx.Response(500, text="<html>oops</html>"), "HTTP 500"),
    (httpx.Response(502, json={"weird": 1}), "HTTP 502"),
    (httpx.Response(200, text="not json {"), "not JSON"),
    (httpx.Response(404, text="nope"), "HTTP 404"),
    (httpx.Response(301, headers={"Location": "https://elsewhere"}), "HTTP 301"),
])
def test_bad_answers_are_plain_graph_errors(response: httpx.Response, needle: str) -> None:
    client, _, _ = make_client(Recorder([response]))
    with pytest.raises(GraphError) as info:
        client.list_subscribed_apps("123")
    assert type(info.value) is GraphError
    assert needle in str(info.value)
    assert "oops" not in str(info.value)


def test_huge_body_is_refused_without_quoting() -> None:
    client, _, _ = make_client(Recorder([httpx.Response(200, content=b"x" * (2 * 1024 * 1024))]))
    with pytest.raises(GraphError, match="larger than"):
        client.list_subscribed_apps("123")


def test_network_error_names_host_and_class_only() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['authorization']}")

    client, _, _ = make_client(refuse)
    with pytest.raises(GraphError) as info:
        client.list_subscribed_apps("123")
    assert str(info.value) == "cannot reach Graph API at graph.example.test: ConnectError"
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("waba_id", ["", "12a", "1/../me", "123?x=1", " 123", "1" * 40])
def test_waba_id_must_be_digits(waba_id: str) -> None:
    rec = Recorder([httpx.Response(200, json={"data": []})])
    client, _, _ = make_client(rec)
    with pytest.raises(UsageError):
        client.list_subscribed_apps(waba_id)
    assert rec.requests == []


@pytest.mark.parametrize(("base", "version", "token"), [
    ("ftp://x", "v24.0", TOKEN), (BASE, "24.0", TOKEN), (BASE, "v24.0/..", TOKEN),
    (BASE, "v24.0", ""), (BASE, "v24.0", "tok\nen")])
def test_bad_constructor_input_is_usage_error(base: str, version: str, token: str) -> None:
    with pytest.raises(UsageError) as info:
        GraphClient(base, version, Secret(token))
    assert "tok" not in str(info.value).replace("token", "")


def test_repr_hides_token() -> None:
    client, _, _ = make_client(Recorder([]))
    assert_no_token(repr(client))
    assert "***" in repr(client)


# ---------------------------------------------------------------------- throttling


def test_throttle_waits_buc_estimate_then_succeeds() -> None:
    ok = httpx.Response(200, json={"data": []})
    rec = Recorder([graph_error(80008, 2446079, headers=buc(0.05)), ok])
    client, sleeps, waits = make_client(rec)
    assert client.list_subscribed_apps("123") == []
    assert sleeps == [pytest.approx(3.0)]
    assert waits == ["rate limited by Graph (code 80008); retrying in 3 s (1/3)"]


def test_buc_header_takes_the_largest_estimate() -> None:
    header = json.dumps({"1": [{"estimated_time_to_regain_access": 1}],
                         "2": [{"estimated_time_to_regain_access": 0},
                               {"estimated_time_to_regain_access": 2}, {"x": 9}]})
    assert parse_buc_wait_s(header) == 120.0
    assert parse_buc_wait_s("not json") is None
    assert parse_buc_wait_s(json.dumps({"1": [{"type": "x"}]})) is None
    assert parse_buc_wait_s(None) is None


def test_429_uses_retry_after() -> None:
    rec = Recorder([httpx.Response(429, headers={"Retry-After": "5"}),
                    httpx.Response(200, json={"success": "true"})])
    client, sleeps, waits = make_client(rec)
    client.unsubscribe("123")
    assert sleeps == [5.0]
    assert waits == ["rate limited by Graph (HTTP 429); retrying in 5 s (1/3)"]


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80008])
def test_exponential_backoff_then_rate_limited(code: int) -> None:
    client, sleeps, waits = make_client(Recorder([graph_error(code)]))
    with pytest.raises(GraphRateLimited) as info:
        client.list_subscribed_apps("123")
    assert sleeps == [2.0, 4.0, 8.0]
    assert len(waits) == 3 and waits[2].endswith("retrying in 8 s (3/3)")
    assert "still rate limited after 3 retries" in str(info.value)
    assert f"Graph API error {code}" in str(info.value)


def test_max_retries_bounds_attempts() -> None:
    rec = Recorder([graph_error(80008, headers=buc(0))])
    client, sleeps, _ = make_client(rec, max_retries=1)
    with pytest.raises(GraphRateLimited):
        client.list_subscribed_apps("123")
    assert len(rec.requests) == 2 and sleeps == [0.0]


def test_advertised_wait_beyond_budget_fails_at_once() -> None:
    rec = Recorder([graph_error(80008, headers=buc(5))])
    client, sleeps, waits = make_client(rec)
    with pytest.raises(GraphRateLimited) as info:
        client.list_subscribed_apps("123")
    assert sleeps == [] and waits == [] and len(rec.requests) == 1
    assert "Meta asks to wait 5 min (300 s)" in str(info.value)


def test_total_wait_is_bounded_by_max_wait_s() -> None:
    rec = Recorder([httpx.Response(429, headers={"Retry-After": "25"})])
    client, sleeps, _ = make_client(rec, max_retries=10)
    with pytest.raises(GraphRateLimited, match="Meta asks to wait 25 s"):
        client.list_subscribed_apps("123")
    assert sleeps == [25.0, 25.0]
    assert sum(sleeps) <= 60


def test_exponential_backoff_stops_at_budget() -> None:
    client, sleeps, _ = make_client(Recorder([graph_error(4)]), max_retries=10, max_wait_s=10)
    with pytest.raises(GraphRateLimited, match="still rate limited"):
        client.list_subscribed_apps("123")
    assert sleeps == [2.0, 4.0]
