"""`sidecar certs probe` against the real sidecar: Meta's certificate is accepted, every
other client is refused, and the verification GET is checked end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import VERIFY_TOKEN


def _probe(sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "certs", "probe", sidecar.url,
         "--ca", str(sidecar.pki.dir / "server-ca.pem"), "--timeout-s", "5", *args],
        capture_output=True, text=True, timeout=30)


def _pair(pem) -> list[str]:
    # trustme writes key + chain into one PEM; ssl.load_cert_chain accepts it for both.
    return ["--cert", str(pem), "--key", str(pem)]


def test_probe_accepted_with_meta_certificate_and_token(start_sidecar, pki):
    sidecar = start_sidecar()
    done = _probe(sidecar, *_pair(pki.meta_client), "--verify-token", VERIFY_TOKEN, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["accepted"] is True and report["verification_ok"] is True
    assert report["protocol"] in ("TLSv1.2", "TLSv1.3")
    assert VERIFY_TOKEN not in done.stdout + done.stderr


def test_probe_wrong_token_fails(start_sidecar, pki):
    sidecar = start_sidecar()
    done = _probe(sidecar, *_pair(pki.meta_client), "--verify-token", "wrong-token")
    assert done.returncode == 1
    assert "wrong-token" not in done.stdout + done.stderr


def test_probe_refused_clients(start_sidecar, pki):
    sidecar = start_sidecar()
    for args in ([], _pair(pki.other_name_client), _pair(pki.rogue_client)):
        done = _probe(sidecar, *args)
        assert done.returncode == 1, (args, done.stdout)
        assert "refused" in (done.stdout + done.stderr).lower()
