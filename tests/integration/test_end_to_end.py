"""Deliveries crossing the whole path: mTLS → signature → schema → normalize → upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl

import pytest
import trustme

from conftest import SIGNING_SECRET, free_port
from sidecar.secret import Secret
from sidecar.tools.sink import RecordingSink
from sidecar.tools.samples import META_DOC_EXAMPLE, SAMPLE_FIELDS, sample_delivery, sample_status_delivery


@pytest.mark.parametrize("mode", ["spool", "direct"])
def test_every_known_field_arrives_normalized_and_signed(start_sidecar, sink, mode):
    sidecar = start_sidecar(mode=mode)
    for field in SAMPLE_FIELDS:
        r = sidecar.post(json.dumps(sample_delivery(field, unique=mode)).encode())
        assert r.status_code == 200, (field, r.text)
    events = sink.wait_for(len(SAMPLE_FIELDS), timeout_s=10)
    by_field = {e["field"]: e for e in events}
    assert set(by_field) == set(SAMPLE_FIELDS)
    msg = by_field["messages"]
    assert msg["type"] == "whatsapp.message" and msg["id"].startswith("evt_")
    assert msg["data"]["metadata"]["phone_number_id"] == msg["phone_number_id"]
    assert msg["data"]["contact"]["wa_id"] == msg["data"]["from"]
    split = {"calls": "whatsapp.call", "message_echoes": "whatsapp.message_echo",
             "smb_message_echoes": "whatsapp.message_echo"}
    for field in SAMPLE_FIELDS:
        if field != "messages":
            assert by_field[field]["type"] == split.get(field, f"whatsapp.{field}")
    # Standard Webhooks signature, recomputed here independently of the sidecar's code.
    for request in sink.requests:
        h = request.headers
        signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + request.body
        mac = hmac.new(SIGNING_SECRET.encode(), signed, hashlib.sha256).digest()
        assert h["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
        assert h["webhook-id"] == json.loads(request.body)["id"]


def test_meta_documentation_example_array_is_accepted(start_sidecar, sink):
    sidecar = start_sidecar()
    r = sidecar.post(json.dumps(META_DOC_EXAMPLE).encode())
    assert r.status_code == 200
    (event,) = sink.wait_for(1, timeout_s=5)
    assert event["type"] == "whatsapp.phone_number_name_update" and event["waba_id"] == "0"
    assert event["data"] == META_DOC_EXAMPLE[0]["entry"][0]["changes"][0]["value"]


def test_statuses_split_with_deterministic_ids(start_sidecar, sink):
    sidecar = start_sidecar()
    delivery = sample_status_delivery(unique="split")
    value = delivery["entry"][0]["changes"][0]["value"]
    extra = dict(value["statuses"][0], status="read")
    value["statuses"].append(extra)
    body = json.dumps(delivery).encode()
    assert sidecar.post(body).status_code == 200
    events = sink.wait_for(len(value["statuses"]), timeout_s=5)
    assert [e["type"] for e in events] == ["whatsapp.status"] * len(value["statuses"])
    assert len({e["id"] for e in events}) == len(events)
    # Meta redelivers the same body: same ids, nothing forwarded twice.
    assert sidecar.post(body).status_code == 200
    sink.wait_for(len(events) + 1, timeout_s=1)
    assert len(sink.delivered()) == len(events)


def test_unknown_field_is_forwarded_as_is(start_sidecar, sink):
    sidecar = start_sidecar()
    value = {"anything": [1, 2, {"nested": True}], "new_key": "kept"}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [
        {"id": "123", "time": 1751247548, "changes": [{"field": "brand_new_field", "value": value}]}
    ]}).encode()
    assert sidecar.post(body).status_code == 200
    (event,) = sink.wait_for(1, timeout_s=5)
    assert event["type"] == "whatsapp.brand_new_field" and event["data"] == value
    assert event["occurred_at"] == "2025-06-30T01:39:08Z"


def test_unknown_keys_inside_known_value_are_kept(start_sidecar, sink):
    sidecar = start_sidecar()
    delivery = sample_delivery("account_update", unique="keys")
    delivery["entry"][0]["changes"][0]["value"]["future_key"] = {"x": 1}
    assert sidecar.post(json.dumps(delivery).encode()).status_code == 200
    (event,) = sink.wait_for(1, timeout_s=5)
    assert event["data"]["future_key"] == {"x": 1}


def test_direct_mode_upstream_down_is_503_and_retry_succeeds(start_sidecar, sink):
    sidecar = start_sidecar(mode="direct", upstream_url=f"http://127.0.0.1:{free_port()}/events",
                            wait=False)
    # /readyz is 503 in direct mode while the upstream refuses connections.
    import httpx
    import time
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            r = httpx.get(sidecar.admin_url + "/readyz", timeout=1)
            if r.status_code == 503:
                assert "upstream" in r.json()["failing"]
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    body = json.dumps(sample_delivery("messages", unique="down")).encode()
    r = sidecar.post(body)
    assert r.status_code == 503
    assert "127.0.0.1" not in r.text


def test_direct_mode_upstream_500_is_503_without_leaking_its_body(start_sidecar, sink):
    sidecar = start_sidecar(mode="direct")
    sink.status = 500
    body = json.dumps(sample_delivery("messages", unique="500")).encode()
    r = sidecar.post(body)
    assert r.status_code == 503 and "sink says no" not in r.text
    sink.status = 200
    assert sidecar.post(body).status_code == 200  # Meta's retry goes through
    assert len(sink.delivered()) == 1
    # The delivery metrics count the synchronous forward as the worker counts its sends.
    import httpx
    text = httpx.get(sidecar.admin_url + "/metrics", timeout=5).text
    assert "sidecar_events_delivered_total 1.0" in text
    assert "sidecar_delivery_latency_seconds_count 1.0" in text


def test_readyz_fails_while_the_spool_cannot_take_a_write(start_sidecar, tmp_path):
    """ "Spool writable": a read would still pass while another writer holds the lock."""
    import sqlite3
    import time

    import httpx

    sidecar = start_sidecar()
    assert httpx.get(sidecar.admin_url + "/readyz", timeout=5).status_code == 200
    holder = sqlite3.connect(tmp_path / "var" / "spool.db", isolation_level=None, timeout=10)
    try:
        holder.execute("begin immediate")  # the write lock, as a stuck writer would hold it
        r = httpx.get(sidecar.admin_url + "/readyz", timeout=10)
        assert r.status_code == 503 and "spool" in r.json()["failing"]
        assert httpx.get(sidecar.admin_url + "/healthz", timeout=5).status_code == 200
    finally:
        holder.execute("rollback")
        holder.close()
    deadline = time.monotonic() + 15
    while httpx.get(sidecar.admin_url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readyz did not recover after the lock was freed"
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["spool", "direct"])
def test_events_reach_an_https_upstream_on_an_internal_ca(start_sidecar, pki, mode):
    """``upstream.ca_file``: the upstream serves HTTPS with a certificate from a CA the
    system does not know; the sidecar verifies it against that file (name included)."""
    internal = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    internal.issue_cert("127.0.0.1").configure_cert(server_ctx)
    internal.cert_pem.write_to_path(str(pki.dir / "upstream-ca.pem"))
    https_sink = RecordingSink(signing_secret=Secret(SIGNING_SECRET),
                               ssl_context=server_ctx).start()
    try:
        assert https_sink.url.startswith("https://")
        sidecar = start_sidecar(mode=mode, upstream_url=https_sink.url,
                                upstream_extra="ca_file: certs/upstream-ca.pem")
        r = sidecar.post(json.dumps(sample_delivery("messages", unique=f"https-{mode}")).encode())
        assert r.status_code == 200, r.text
        (event,) = https_sink.wait_for(1, timeout_s=10)
        assert event["type"] == "whatsapp.message"
        assert https_sink.requests[0].signature_ok
        # Its expiry is watched like the listener's certificates.
        (series,) = [line for line in sidecar.metrics().splitlines()
                     if line.startswith("sidecar_certificate_expiry_seconds{")
                     and 'role="upstream_ca"' in line]
        assert f'file="{pki.dir / "upstream-ca.pem"}"' in series
        assert float(series.rsplit(" ", 1)[1]) > 86400
    finally:
        https_sink.stop()
