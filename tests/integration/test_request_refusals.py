"""Every refusal of SPEC §2 over real mTLS, and after each, nothing reached the upstream."""

from __future__ import annotations

import json
import time

import pytest

from conftest import APP_SECRET, VERIFY_TOKEN
from sidecar.tools.samples import sample_delivery

VALID = json.dumps(sample_delivery("messages", unique="refusals")).encode()


@pytest.fixture
def sidecar(start_sidecar):
    return start_sidecar()


def _nothing_forwarded(sidecar, sink) -> None:
    time.sleep(0.3)  # give a (wrongly) spooled event the chance to be delivered
    assert sink.requests == []
    assert "sidecar_events_spooled_total 0.0" in sidecar.metrics()


def test_missing_signature_is_401(sidecar, sink):
    r = sidecar.post(VALID, headers={"x-hub-signature-256": ""})
    assert r.status_code == 401
    assert r.json() == {"error": "missing X-Hub-Signature-256 header"}
    _nothing_forwarded(sidecar, sink)


def test_wrong_secret_is_401(sidecar, sink):
    r = sidecar.post(VALID, secret="not-the-secret")
    assert r.status_code == 401
    assert "sidecar_signature_failures_total 1.0" in sidecar.metrics()
    _nothing_forwarded(sidecar, sink)


def test_signature_over_reserialized_body_is_401(sidecar, sink):
    # Meta signs the bytes it sends; a body signed after re-serialising is not the same bytes.
    from sidecar.checks.signature import sign
    from sidecar.secret import Secret

    doc = json.loads(VALID)
    doc["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Zoë @ home/©"
    sent = json.dumps(doc, ensure_ascii=True).encode()  # escaped, as Meta sends
    reserialized = json.dumps(json.loads(sent), ensure_ascii=False).encode()
    r = sidecar.post(sent, headers={"x-hub-signature-256": sign(Secret(APP_SECRET),
                                                                  reserialized)})
    assert r.status_code == 401
    _nothing_forwarded(sidecar, sink)


@pytest.mark.parametrize("body, reason", [
    (b"not json", "JSON"),
    (b'{"object": "page", "entry": []}', "object"),
    (b"[]", "empty"),
    (b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"x",'
     b'"value":NaN}]}]}', "NaN"),
    (b'{"object":"whatsapp_business_account","entry":[{"id":"\xff"}]}', "UTF-8"),
])
def test_bad_payload_is_400_with_short_json_error(sidecar, sink, body, reason):
    r = sidecar.post(body)
    assert r.status_code == 400
    assert set(r.json()) == {"error"} and len(r.json()["error"]) < 200
    _nothing_forwarded(sidecar, sink)


def test_oversize_body_is_413(start_sidecar, sink):
    sidecar = start_sidecar(extra="limits: {max_body_bytes: 2048}\n")
    big = json.dumps({"object": "whatsapp_business_account", "entry": [],
                      "pad": "x" * 4096}).encode()
    r = sidecar.post(big)
    assert r.status_code == 413
    _nothing_forwarded(sidecar, sink)


def test_oversize_chunked_body_is_413_without_content_length(start_sidecar, sink):
    sidecar = start_sidecar(extra="limits: {max_body_bytes: 2048}\n")

    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    with sidecar.client() as c:
        r = c.post(sidecar.url, content=chunks(), headers={"x-hub-signature-256": "sha256=" + "0" * 64})
    assert r.status_code == 413
    _nothing_forwarded(sidecar, sink)


def test_wrong_method_is_405_and_other_path_404(sidecar, sink):
    with sidecar.client() as c:
        assert c.put(sidecar.url, content=VALID).status_code == 405
        assert c.delete(sidecar.url).status_code == 405
        assert c.post(sidecar.url.replace("/whatsapp", "/other"), content=VALID).status_code == 404
    _nothing_forwarded(sidecar, sink)


def test_verification_get(sidecar, sink):
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    with sidecar.client() as c:
        ok = c.get(sidecar.url, params=params)
        assert ok.status_code == 200 and ok.text == "1158201444"
        assert ok.headers["content-type"].startswith("text/plain")
        assert ok.headers["x-content-type-options"] == "nosniff"  # an echo, never HTML
        wrong = c.get(sidecar.url, params={**params, "hub.verify_token": "nope"})
        assert wrong.status_code == 403 and "1158201444" not in wrong.text
        no_mode = c.get(sidecar.url, params={k: v for k, v in params.items() if k != "hub.mode"})
        assert no_mode.status_code == 403
        no_challenge = c.get(sidecar.url, params={k: v for k, v in params.items()
                                                  if k != "hub.challenge"})
        assert no_challenge.status_code == 400
    assert VERIFY_TOKEN not in sidecar.log()
    _nothing_forwarded(sidecar, sink)


def test_second_configured_secret_is_accepted(start_sidecar, sink):
    sidecar = start_sidecar(secrets=("${TEST_APP_SECRET}", "second-app-secret"))
    r = sidecar.post(VALID, secret="second-app-secret")
    assert r.status_code == 200
    assert len(sink.wait_for(1, timeout_s=5)) == 1


def test_no_secret_or_traceback_in_any_answer_or_log(sidecar, sink):
    responses = [sidecar.post(VALID, secret="bad"), sidecar.post(b"{", ), sidecar.post(VALID)]
    for r in responses:
        assert APP_SECRET not in r.text and "Traceback" not in r.text
    log = sidecar.log()
    assert APP_SECRET not in log and "Traceback" not in log
