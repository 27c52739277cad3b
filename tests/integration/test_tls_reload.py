"""Certificate lifecycle on a running server: rotation, CA removal, broken renewals, SIGHUP,
and the onboarding switch from client_auth optional to required — all without a restart."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from conftest import META_CN, VERIFY_TOKEN

PARAMS = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "9"}


def _replace(dst: Path, data: bytes) -> None:
    tmp = dst.with_name(dst.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def _served_ca_client(ca: trustme.CA, client_pem: Path) -> httpx.Client:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.load_cert_chain(str(client_pem))
    return httpx.Client(verify=ctx, timeout=5, trust_env=False)


def _wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.3)
    return False


def _accepted(client_factory) -> bool:
    try:
        with client_factory() as c:
            return c.get(URL[0], params=PARAMS).status_code == 200
    except httpx.HTTPError:
        return False


URL: list[str] = [""]


def _reloads(metrics_text: str, result: str) -> float:
    prefix = f'sidecar_tls_reloads_total{{result="{result}"}} '
    return sum(float(line[len(prefix):]) for line in metrics_text.splitlines()
               if line.startswith(prefix))


def test_server_cert_rotates_under_continuous_requests(start_sidecar, pki):
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    new_ca = trustme.CA()
    new_server = new_ca.issue_cert("127.0.0.1", "localhost")
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def hammer() -> None:
        # Trusts both server CAs: every request must succeed across the swap.
        ctx = pki.client_context(pki.meta_client)
        new_ca.configure_trust(ctx)
        with httpx.Client(verify=ctx, timeout=5, trust_env=False,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not done.is_set():
                try:
                    r = c.get(sidecar.url, params=PARAMS)
                    if r.status_code != 200:
                        failures.append(str(r.status_code))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                count[0] += 1

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.3)
        _replace(pki.dir / "server.key", new_server.private_key_pem.bytes())
        _replace(pki.dir / "server.pem", b"".join(p.bytes() for p in new_server.cert_chain_pems))
        # A client trusting only the new server CA gets in after the reload.
        assert _wait_until(lambda: _accepted(lambda: _served_ca_client(new_ca, pki.meta_client)))
        time.sleep(0.3)
    finally:
        done.set()
        t.join(10)
    assert failures == [] and count[0] > 10
    assert _reloads(sidecar.metrics(), "success") >= 1


def test_replaced_client_ca_is_no_longer_trusted(start_sidecar, pki):
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    old_client = lambda: sidecar.client(pki.meta_client)  # noqa: E731
    assert _accepted(old_client)
    with sidecar.client(pki.meta_client) as kept_alive:  # a connection opened before the swap
        assert kept_alive.get(sidecar.url, params=PARAMS).status_code == 200
        new_ca = trustme.CA()
        new_client = pki.client_pair("new", new_ca, common_name=META_CN)
        _replace(pki.dir / "client-ca.pem", new_ca.cert_pem.bytes())
        assert _wait_until(lambda: _accepted(lambda: sidecar.client(new_client)))
        assert not _accepted(old_client)
        # A connection opened under the removed CA is no longer served: its next request
        # is 421 (make a new connection), and the new handshake is refused.
        assert kept_alive.get(sidecar.url, params=PARAMS).status_code == 421
    with sidecar.client(new_client) as kept_alive:
        assert kept_alive.get(sidecar.url, params=PARAMS).status_code == 200
        # A CA added beside the one in use changes nothing for open connections.
        _replace(pki.dir / "client-ca.pem", new_ca.cert_pem.bytes() + pki.client_ca.cert_pem.bytes())
        assert _wait_until(lambda: _accepted(old_client))
        assert kept_alive.get(sidecar.url, params=PARAMS).status_code == 200


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls12_session_from_before_a_ca_removal_does_not_resume(start_sidecar, pki, loop):
    """A resumed TLS 1.2 session skips the chain check, so sessions must not outlive the
    CA set they were verified against: each reload that swaps the TLS state starts an
    empty session cache."""
    sidecar = start_sidecar(loop=loop)
    URL[0] = sidecar.url
    client = pki.client_context(pki.meta_client)
    client.maximum_version = ssl.TLSVersion.TLSv1_2

    def connect(session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession | None, bool]:
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as conn:
                conn.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert conn.recv(100).startswith(b"HTTP/1.1 404")
                return conn.session, conn.session_reused

    session, reused = connect()
    assert not reused
    assert connect(session)[1]  # unchanged CAs: resuming is fine (the name check still runs)
    new_ca = trustme.CA()
    new_client = pki.client_pair("new", new_ca, common_name=META_CN)
    _replace(pki.dir / "client-ca.pem", new_ca.cert_pem.bytes())
    assert _wait_until(lambda: _accepted(lambda: sidecar.client(new_client)))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(session)  # a full handshake now, and the old CA is gone


def test_broken_renewal_keeps_the_old_pair_serving(start_sidecar, pki):
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    other = trustme.CA().issue_cert("127.0.0.1")
    # A key that does not match the certificate on disk.
    _replace(pki.dir / "server.key", other.private_key_pem.bytes())
    assert _wait_until(lambda: _reloads(sidecar.metrics(), "failure") >= 1)
    assert _accepted(lambda: sidecar.client(pki.meta_client))
    assert "tls.reload_failed" in sidecar.log() and "does not match" in sidecar.log()
    # Garbage in the certificate file: same.
    _replace(pki.dir / "server.pem", b"-----BEGIN CERTIFICATE-----\nnope\n")
    time.sleep(1.2)
    assert _accepted(lambda: sidecar.client(pki.meta_client))


def test_sighup_reloads_at_once(start_sidecar, pki, tmp_path):
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    # Make the interval long, so only SIGHUP can explain a quick reload.
    cfg = sidecar.config_path.read_text().replace("reload_interval_s: 0.5", "reload_interval_s: 3600")
    sidecar.config_path.write_text(cfg)
    sidecar.stop()
    sidecar.start()
    new_ca = trustme.CA()
    new_client = pki.client_pair("hup", new_ca, common_name=META_CN)
    _replace(pki.dir / "client-ca.pem", new_ca.cert_pem.bytes())
    time.sleep(0.5)
    assert not _accepted(lambda: sidecar.client(new_client))
    sidecar.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: _accepted(lambda: sidecar.client(new_client)), timeout_s=3)


@pytest.mark.parametrize("case", ["expired", "not_yet_valid"])
def test_client_certificate_outside_validity_is_refused(start_sidecar, pki, case):
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    now = datetime.now(timezone.utc)
    window = {"expired": (now - timedelta(days=10), now - timedelta(days=1)),
              "not_yet_valid": (now + timedelta(days=1), now + timedelta(days=10))}[case]
    pem = pki.client_pair(case, pki.client_ca, common_name=META_CN,
                          not_before=window[0], not_after=window[1])
    assert not _accepted(lambda: sidecar.client(pem))
    assert _accepted(lambda: sidecar.client(pki.meta_client))


def test_onboarding_optional_then_required_without_restart(start_sidecar, pki, sink):
    import json

    from sidecar.tools.samples import sample_delivery

    sidecar = start_sidecar(client_auth="optional")
    URL[0] = sidecar.url
    assert "tls.client_auth_optional" in sidecar.log()
    assert "sidecar_client_auth_optional 1.0" in sidecar.metrics()
    # Meta's first verification GET arrives without a client certificate.
    assert _accepted(lambda: sidecar.client(None))
    # ... and so may signed deliveries, admitted on the signature alone.
    body = json.dumps(sample_delivery("messages", unique="onboarding")).encode()
    assert sidecar.post(body, client_pem=None).status_code == 200
    assert sidecar.post(body, client_pem=None, secret="wrong").status_code == 401
    # A presented certificate must still carry an allowed name.
    assert not _accepted(lambda: sidecar.client(pki.other_name_client))

    pid = sidecar.proc.pid
    cfg = sidecar.config_path.read_text().replace("client_auth: optional", "client_auth: required")
    sidecar.config_path.write_text(cfg)
    sidecar.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: not _accepted(lambda: sidecar.client(None)), timeout_s=5)
    assert _accepted(lambda: sidecar.client(pki.meta_client))
    assert sidecar.proc.pid == pid and sidecar.proc.poll() is None
    assert "sidecar_client_auth_optional 0.0" in sidecar.metrics()


def test_app_secret_rotates_by_config_reload(start_sidecar, pki, sink):
    import json

    from sidecar.tools.samples import sample_delivery

    sidecar = start_sidecar()
    body = json.dumps(sample_delivery("security", unique="rotate")).encode()
    assert sidecar.post(body, secret="brand-new-secret").status_code == 401
    cfg = sidecar.config_path.read_text().replace(
        'app_secrets: ["${TEST_APP_SECRET}"]', 'app_secrets: ["${TEST_APP_SECRET}", "brand-new-secret"]')
    sidecar.config_path.write_text(cfg)
    sidecar.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: sidecar.post(body, secret="brand-new-secret").status_code == 200)


def test_broken_config_on_reload_keeps_serving(start_sidecar, pki):
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    sidecar.config_path.write_text(sidecar.config_path.read_text() + "\nbogus_key: 1\n")
    sidecar.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: "config.reload_failed" in sidecar.log())
    assert _accepted(lambda: sidecar.client(pki.meta_client))
    assert "bogus_key" in sidecar.log()


def _expiry_series(metrics_text: str) -> dict[tuple[str, str], float]:
    """``sidecar_certificate_expiry_seconds`` as {(role, subject): seconds}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.labels["role"], s.labels["subject"]): s.value
            for family in text_string_to_metric_families(metrics_text)
            if family.name == "sidecar_certificate_expiry_seconds"
            for s in family.samples}


def _seconds_left(pem: bytes) -> float:
    cert = x509.load_pem_x509_certificate(pem)
    return (cert.not_valid_after_utc - datetime.now(timezone.utc)).total_seconds()


@pytest.mark.parametrize("workers", [1, 2])
def test_certificate_expiry_metric_follows_a_rotation(start_sidecar, pki, workers):
    """/metrics reports the seconds left of every loaded certificate.  After a rotation
    only the new server certificate is reported, with several ingest processes too: an
    expiry alert must not keep firing for a certificate that is no longer served."""
    sidecar = start_sidecar(workers=workers)
    series = _expiry_series(sidecar.metrics())
    server = {subject: v for (role, subject), v in series.items() if role == "server"}
    client_cas = [v for (role, _), v in series.items() if role == "client_ca"]
    (old_subject, old_left), = server.items()
    assert old_left == pytest.approx(_seconds_left((pki.dir / "server.pem").read_bytes()), abs=60)
    assert client_cas == [pytest.approx(_seconds_left((pki.dir / "client-ca.pem").read_bytes()),
                                        abs=60)]

    new_server = trustme.CA().issue_cert(
        "127.0.0.1", "localhost", not_after=datetime.now(timezone.utc) + timedelta(days=20))
    _replace(pki.dir / "server.key", new_server.private_key_pem.bytes())
    _replace(pki.dir / "server.pem", b"".join(p.bytes() for p in new_server.cert_chain_pems))

    def only_the_new_one() -> bool:
        server = {s: v for (role, s), v in _expiry_series(sidecar.metrics()).items()
                  if role == "server"}
        return (len(server) == 1 and old_subject not in server
                and abs(next(iter(server.values())) - 20 * 86400) < 120)

    assert _wait_until(only_the_new_one)


def test_a_sighup_that_shortens_the_interval_applies_it_to_the_parent_too(start_sidecar, pki):
    """With ``--workers 2`` the parent serves /metrics and /readyz from its own view of
    the certificates.  A SIGHUP that shortens ``tls.reload_interval_s`` must restart the
    parent's wait too: else a rotation that follows (cert-manager replaces the files,
    no signal) is served by every ingest process but reported by the parent only after
    the old, long interval (and /readyz fails once the old certificate expires)."""
    sidecar = start_sidecar(workers=2)
    sidecar.config_path.write_text(sidecar.config_path.read_text().replace(
        "reload_interval_s: 0.5", "reload_interval_s: 3600"))
    sidecar.stop()
    sidecar.start()
    (old_subject,) = [subject for (role, subject) in _expiry_series(sidecar.metrics())
                      if role == "server"]
    sidecar.config_path.write_text(sidecar.config_path.read_text().replace(
        "reload_interval_s: 3600", "reload_interval_s: 0.5"))
    sidecar.send_signal(signal.SIGHUP)
    assert _wait_until(lambda: 'sidecar_config_reloads_total{result="success"} 3.0'
                       in sidecar.metrics())  # the parent and both ingest processes
    new_server = trustme.CA().issue_cert(
        "127.0.0.1", "localhost", not_after=datetime.now(timezone.utc) + timedelta(days=20))
    _replace(pki.dir / "server.key", new_server.private_key_pem.bytes())
    _replace(pki.dir / "server.pem", b"".join(p.bytes() for p in new_server.cert_chain_pems))

    def parent_reports_the_new_one() -> bool:
        server = [s for (role, s) in _expiry_series(sidecar.metrics()) if role == "server"]
        return len(server) == 1 and server[0] != old_subject

    assert _wait_until(parent_reports_the_new_one)


def _kept_alive(client: httpx.Client, url: str, body: bytes) -> int:
    """A signed POST on ``client``'s open connection; its status."""
    from sidecar.checks.signature import sign
    from sidecar.secret import Secret

    from conftest import APP_SECRET

    return client.post(url, content=body, headers={
        "content-type": "application/json",
        "x-hub-signature-256": sign(Secret(APP_SECRET), body)}).status_code


@pytest.mark.parametrize("change", ["client_auth", "allowed_names"])
def test_a_reload_withdraws_admission_from_connections_already_open(start_sidecar, pki,
                                                                     sink, change):
    # Every request is guarded by the policy in force, not only the handshake: a
    # kept-alive connection admitted while onboarding (no certificate) or under a name
    # since removed gets 403 at its next request, and is closed.
    import json

    from sidecar.tools.samples import sample_delivery

    optional = change == "client_auth"
    sidecar = start_sidecar(client_auth="optional" if optional else "required")
    body = json.dumps(sample_delivery("security", unique=change)).encode()
    client_pem = None if optional else pki.meta_client
    with sidecar.client(client_pem) as kept:
        assert kept.get(sidecar.url, params=PARAMS).status_code == 200  # connection open
        cfg = sidecar.config_path.read_text()
        if optional:
            cfg = cfg.replace("client_auth: optional", "client_auth: required")
        else:
            cfg = cfg.replace("allowed_client_names: [", "allowed_client_names: [someone.else, ")
            cfg = cfg.replace(f", {META_CN}]", "]")
        assert cfg != sidecar.config_path.read_text()
        sidecar.config_path.write_text(cfg)
        sidecar.send_signal(signal.SIGHUP)
        URL[0] = sidecar.url
        assert _wait_until(lambda: not _accepted(lambda: sidecar.client(client_pem)), 5)
        assert _kept_alive(kept, sidecar.url, body) == 403
    assert sink.requests == []
    assert "admission_withdrawn" in sidecar.log()


def test_a_ca_added_keeps_connections_whose_chain_has_an_intermediate(start_sidecar, pki):
    # Meta's chain may run leaf → intermediate → the configured CA: the leaf alone is not
    # issued by any configured CA, and adding a CA (a migration's first step) must not
    # turn its open connections away.
    leaf = pki.client_ca.create_child_ca().issue_cert(common_name=META_CN)
    chained = pki.dir / "client-chained.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(chained))
    sidecar = start_sidecar()
    URL[0] = sidecar.url
    with sidecar.client(chained) as kept:
        assert kept.get(sidecar.url, params=PARAMS).status_code == 200
        added = trustme.CA()
        added_client = pki.client_pair("added", added, common_name=META_CN)
        _replace(pki.dir / "client-ca.pem",
                 added.cert_pem.bytes() + pki.client_ca.cert_pem.bytes())  # reordered too
        assert _wait_until(lambda: _accepted(lambda: sidecar.client(added_client)))
        assert kept.get(sidecar.url, params=PARAMS).status_code == 200
