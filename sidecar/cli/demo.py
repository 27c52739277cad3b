"""``sidecar demo``: the whole path in one command, on embedded defaults.

Dev certificates in a temporary folder, a local sink upstream that prints what it
receives, the real sidecar (``python -m sidecar serve``) in a child process, one signed
test delivery per known field over mTLS, a summary, and a clean exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sidecar.cli._args import positive_float
from sidecar.events import JSONValue
from sidecar.tools.samples import META_DOC_EXAMPLE, SAMPLE_FIELDS, sample_delivery, sample_status_delivery
from sidecar.secret import Secret
from sidecar.tools.sender import ClientTLS, send_delivery
from sidecar.tools.sink import ReceivedRequest, RecordingSink
from sidecar.tools.devcerts import write_dev_certs
from sidecar.tools.launch import NotReady, ServeProcess, free_port, write_config

__all__ = ["register", "run"]

DEMO_APP_SECRET = "demo-app-secret"
DEMO_VERIFY_TOKEN = "demo-verify-token"
DEMO_SIGNING_SECRET = "demo-signing-secret"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a self-contained demo: certs, sink, sidecar, deliveries",
                       description="Make dev certificates, start a local sink upstream and the "
                                   "sidecar, send one signed delivery per known field over mTLS, "
                                   "print what the sink received, and exit.")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--timeout-s", type=positive_float, default=30.0,
                   help="give up after this many seconds (default 30)")
    p.set_defaults(func=run)


_OUTPUT = threading.Lock()


def _say(line: str) -> None:
    """One whole line per write: the sink's threads print while the demo sends."""
    with _OUTPUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _print_request(request: ReceivedRequest) -> None:
    signature = {True: "signature ok", False: "SIGNATURE BAD", None: "unsigned"}[
        request.signature_ok]
    for event in request.events():
        data = event.get("data", {})
        detail = (data.get("text", {}) or {}).get("body") or data.get("status") or \
            data.get("event") or data.get("decision") or ""
        _say(f"  sink <- {event['type']:<42} {event['id']}  ({signature}) {detail}"[:140])


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.timeout_s
    folder = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    _say(f"demo folder: {folder}")
    certs = write_dev_certs(folder / "certs")
    _say("1. made a dev CA, a server certificate and a client certificate with Meta's CN")
    sink = RecordingSink(signing_secret=Secret(DEMO_SIGNING_SECRET), on_request=_print_request)
    sink.start()
    port, admin_port = free_port(), free_port()
    config = write_config(folder, port=port, admin_port=admin_port, upstream_url=sink.url,
                          app_secrets=["${DEMO_APP_SECRET}"], verify_token="${DEMO_VERIFY_TOKEN}",
                          signing_secret="${DEMO_SIGNING_SECRET}", backoff_initial_s=0.2,
                          logging="{level: warning, format: text}")
    env = dict(os.environ, DEMO_APP_SECRET=DEMO_APP_SECRET, DEMO_VERIFY_TOKEN=DEMO_VERIFY_TOKEN,
               DEMO_SIGNING_SECRET=DEMO_SIGNING_SECRET)
    _say(f"2. started a sink upstream on {sink.url}")
    sidecar = ServeProcess(config, admin_port=admin_port, env=env).start()
    try:
        sidecar.wait_ready(timeout_s=max(0.5, deadline - time.monotonic()))
        url = f"https://127.0.0.1:{port}/webhooks/whatsapp"
        _say(f"3. the sidecar listens on {url} (mTLS, spool mode); sending deliveries:")
        tls = ClientTLS(certs.client_cert, certs.client_key, certs.ca_cert)
        token = uuid.uuid4().hex[:8]
        deliveries: list[tuple[str, JSONValue]] = [
            (field, sample_delivery(field, unique=token)) for field in SAMPLE_FIELDS]
        deliveries.append(("messages (statuses)", sample_status_delivery(unique=token)))
        deliveries.append(("Meta's documentation example (array)", META_DOC_EXAMPLE))
        failed = 0
        for label, payload in deliveries:
            result = send_delivery(url, payload, secret=Secret(DEMO_APP_SECRET), tls=tls)
            failed += result.status != 200
            _say(f"  POST {label:<38} -> {result.status} {result.body}")
        expected = _accepted_events(deliveries)
        received = sink.wait_for(expected, timeout_s=max(0.5, deadline - time.monotonic()))
        ok = failed == 0 and len(received) >= expected and \
            all(r.signature_ok for r in sink.requests)
        _say(f"4. summary: {len(deliveries)} deliveries sent, {len(deliveries) - failed} "
             f"accepted; {len(received)}/{expected} events delivered to the sink; "
             f"{time.monotonic() - started:.1f} s")
        _say("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
    except NotReady as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        sidecar.stop(timeout_s=15)
        sink.stop()
        if not args.keep:
            _remove(folder)


def _accepted_events(deliveries: list[tuple[str, JSONValue]]) -> int:
    """How many events the sink should get: the normalizer's own count."""
    from datetime import datetime, timezone

    from sidecar.normalize import normalize

    seen: set[str] = set()
    for _, payload in deliveries:
        envelopes = payload if isinstance(payload, list) else [payload]
        for event in normalize(envelopes, received_at=datetime.now(timezone.utc)).events:
            seen.add(event.id)
    return len(seen)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
