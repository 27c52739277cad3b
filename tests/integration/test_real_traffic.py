"""Every real-world body in ``../shared/meta-payloads`` (Meta's documentation examples,
captures app authors committed, SDK fixtures in Meta's shape) through the running
sidecar: each answered 200 (a documentation placeholder where Meta always sends an
integer: 400), none quarantined, and every message and status delivered to the
upstream with its keys intact."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import APP_SECRET
from sidecar.checks.signature import sign
from sidecar.events import message_event_id, status_event_id
from sidecar.secret import Secret

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / ".." / "shared" / "meta-payloads"
BODIES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []

pytestmark = pytest.mark.skipif(
    not BODIES, reason=f"the shared corpus of real bodies is not beside the repository "
                       f"({CORPUS} is absent)")


def _placeholder_time(body: Any) -> bool:
    """A documentation placeholder (``"<WEBHOOK_TIMESTAMP>"``) as ``entry.time``, where
    Meta always sends an integer: the one thing the envelope check may refuse."""
    envelopes = body if isinstance(body, list) else [body]
    return any("time" in entry and not isinstance(entry["time"], int)
               for envelope in envelopes for entry in envelope.get("entry", []))


def _elements(body: Any, key: str) -> list[dict[str, Any]]:
    found = []
    for envelope in body if isinstance(body, list) else [body]:
        for entry in envelope["entry"]:
            for change in entry["changes"]:
                if change["field"] in ("messages", "calls"):
                    found += change["value"].get(key, [])
    return found


def test_every_real_body_is_accepted_and_forwarded_whole(start_sidecar, sink) -> None:
    sidecar = start_sidecar()
    answers: dict[str, tuple[int, Any]] = {}
    with sidecar.client() as client:
        for path in BODIES:
            raw = path.read_bytes()
            r = client.post(sidecar.url, content=raw, headers={
                "content-type": "application/json",
                "x-hub-signature-256": sign(Secret(APP_SECRET), raw)})
            answers[path.name] = (r.status_code, r.json())
    refused = sorted(n for n, (status, _) in answers.items() if status == 400)
    expected_refused = sorted(p.name for p in BODIES if _placeholder_time(json.loads(p.read_bytes())))
    assert refused == expected_refused and len(refused) <= 3
    assert all(status in (200, 400) for status, _ in answers.values())
    quarantined = {n: a for n, (status, a) in answers.items() if status == 200 and a["quarantined"]}
    assert quarantined == {}
    accepted = len(BODIES) - len(refused)
    assert accepted >= 205

    # Every message and status of an accepted body reaches the upstream with its keys
    # intact.  Ids are the documented ones (a message's from its wamid, a status's from
    # wamid + status + timestamp); where two bodies share an id (the same wamid in two
    # documentation examples) the first one sent is the one stored, the repeat dropped.
    wanted: dict[str, dict[str, Any]] = {}
    for path in BODIES:
        if path.name in refused:
            continue
        body = json.loads(path.read_bytes())
        for message in _elements(body, "messages"):
            wanted.setdefault(message_event_id(message["id"]), message)
        for status in _elements(body, "statuses"):
            wanted.setdefault(status_event_id(status["id"], status["status"],
                                              status.get("timestamp")), status)
    deadline = time.monotonic() + 60
    delivered: dict[str, Any] = {}
    while set(wanted) - set(delivered) and time.monotonic() < deadline:
        delivered = {e["id"]: e for e in sink.wait_for(len(wanted), timeout_s=1)}
    assert sorted(set(wanted) - set(delivered)) == []
    for event_id, element in wanted.items():
        data = delivered[event_id]["data"]
        assert {k: data[k] for k in element} == element, event_id
        assert set(data) - set(element) <= {"metadata", "contact"}
    assert all(r.signature_ok for r in sink.requests)
