"""A replaced ingest process (`serve --workers 2`) serves the last good configuration.

After a SIGHUP reload switched onboarding off (`client_auth: required`) and removed an
app secret, an allowed name and a client CA, one ingest process is SIGKILLed.  While the
parent replaces it, and after, fresh connections keep probing: no certificate-less
client, no client of the removed name or CA and no delivery signed with the removed
secret is admitted at any moment.  The reload interval is an hour, so only the
replacement's start-up config can explain what it admits.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx

from conftest import APP_SECRET, APP_SECRET_2, META_CN, VERIFY_TOKEN, wait_until
from sidecar.tools.samples import sample_delivery
from test_workers import _children

PARAMS = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"}


def _admitted_get(sidecar, client_pem) -> bool:
    try:
        with sidecar.client(client_pem) as c:
            return c.get(sidecar.url, params=PARAMS).status_code == 200
    except httpx.HTTPError:
        return False


def _post_status(sidecar, secret: str, tag: str) -> int | None:
    body = json.dumps(sample_delivery("security", unique=tag)).encode()
    try:
        return sidecar.post(body, secret=secret).status_code
    except httpx.HTTPError:
        return None


def test_a_replaced_ingest_process_never_undoes_a_reload(start_sidecar, pki):
    (pki.dir / "rogue-ca.pem").write_bytes(pki.rogue_ca.cert_pem.bytes())
    sidecar = start_sidecar(
        workers=2, client_auth="optional",
        secrets=("${TEST_APP_SECRET}", APP_SECRET_2))
    text = sidecar.config_path.read_text()
    onboarding = (text.replace("reload_interval_s: 0.5", "reload_interval_s: 3600")
                  .replace("client_ca_files: [certs/client-ca.pem]",
                           "client_ca_files: [certs/client-ca.pem, certs/rogue-ca.pem]")
                  .replace(f"allowed_client_names: [{META_CN}]",
                           f"allowed_client_names: [{META_CN}, evil.example.com]"))
    sidecar.config_path.write_text(onboarding)
    sidecar.stop()
    sidecar.start()
    wait_until(lambda: len(_children(sidecar.proc.pid)) == 2, what="two ingest processes")
    # Onboarding: everything the reload will remove is admitted now.
    assert _admitted_get(sidecar, None)
    assert _admitted_get(sidecar, pki.rogue_client)
    assert _admitted_get(sidecar, pki.other_name_client)
    assert _post_status(sidecar, APP_SECRET_2, "before") == 200

    sidecar.config_path.write_text(
        onboarding.replace("client_auth: optional", "client_auth: required")
        .replace("client_ca_files: [certs/client-ca.pem, certs/rogue-ca.pem]",
                 "client_ca_files: [certs/client-ca.pem]")
        .replace(f"allowed_client_names: [{META_CN}, evil.example.com]",
                 f"allowed_client_names: [{META_CN}]")
        .replace(f'app_secrets: ["${{TEST_APP_SECRET}}", "{APP_SECRET_2}"]',
                 'app_secrets: ["${TEST_APP_SECRET}"]'))
    sidecar.send_signal(signal.SIGHUP)
    wait_until(lambda: not any(_admitted_get(sidecar, None) for _ in range(6)), 10,
               "the SIGHUP reload to reach every process")

    victim = _children(sidecar.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    admitted: list[str] = []
    replaced_at: float | None = None
    deadline = time.monotonic() + 30
    n = 0
    # Probe until the replacement has served for a few seconds (bounded either way).
    while time.monotonic() < deadline and (replaced_at is None
                                           or time.monotonic() < replaced_at + 4):
        n += 1
        if _admitted_get(sidecar, None):
            admitted.append("no certificate")
        if _admitted_get(sidecar, pki.rogue_client):
            admitted.append("removed CA")
        if _admitted_get(sidecar, pki.other_name_client):
            admitted.append("removed name")
        if _post_status(sidecar, APP_SECRET_2, f"removed-{n}") == 200:
            admitted.append("removed secret")
        children = _children(sidecar.proc.pid)
        if replaced_at is None and len(children) == 2 and victim not in children \
                and httpx.get(sidecar.admin_url + "/readyz").status_code == 200:
            replaced_at = time.monotonic()
    assert replaced_at is not None, "the killed process was not replaced"
    assert admitted == [], f"admitted after the reload: {sorted(set(admitted))}"
    # The replacement serves what the reload kept.
    assert _post_status(sidecar, APP_SECRET, "kept") == 200
    assert _admitted_get(sidecar, pki.meta_client)
