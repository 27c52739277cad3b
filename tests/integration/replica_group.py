"""Replicas on one PostgreSQL spool: real ``sidecar serve`` processes (conftest's
``SidecarProcess``), each with its own ports and config file, all with the same
``delivery.spool_url`` (from ``${TEST_SPOOL_URL}``, so the password is in no file), and
a way to read the shared spool back from the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from conftest import APP_SECRET, PKI, SidecarProcess, free_port, wait_until, write_config  # noqa: F401 - wait_until is re-exported
from sidecar.tools.samples import sample_delivery

T = TypeVar("T")



def message_body(token: str) -> tuple[bytes, str]:
    """A ``messages`` delivery with one message; (body, the event's wamid)."""
    delivery = sample_delivery("messages", unique=token)
    return json.dumps(delivery).encode(), delivery["entry"][0]["changes"][0]["value"][
        "messages"][0]["id"]


def wamids(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["id"] for e in events if e["type"] == "whatsapp.message"]


def states(url: str) -> dict[str, int]:
    """The shared spool's rows by state, read straight from PostgreSQL."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return {str(s): int(n) for s, n in
                conn.execute("select state, count(*) from events group by state")}


def spool_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "spool", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


class Replicas:
    def __init__(self, tmp_path: Path, pki: PKI, upstream_url: str) -> None:
        self.tmp_path = tmp_path
        self.pki = pki
        self.upstream_url = upstream_url
        self.started: list[SidecarProcess] = []

    def start(self, name: str, *, workers: int = 1, wait: bool = True, extra: str = "",
              upstream_url: str | None = None) -> SidecarProcess:
        """``extra``: top-level config keys; ``upstream_url``: another upstream than the
        group's sink."""
        port, admin_port = free_port(), free_port()
        # write_config writes sidecar.yaml next to the certificates; each replica's file
        # gets its own name there, and the shared spool instead of a spool file.
        text = write_config(self.tmp_path, port=port, admin_port=admin_port,
                            upstream_url=upstream_url or self.upstream_url, extra=extra,
                            spool_path=self.tmp_path / "unused.db").read_text()
        lines = [line for line in text.splitlines() if not line.startswith("  spool_path:")]
        at = lines.index("delivery:") + 1
        lines.insert(at, '  spool_url: "${TEST_SPOOL_URL}"')
        config = self.tmp_path / f"{name}.yaml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        proc = SidecarProcess(config, port, admin_port, self.pki, "/webhooks/whatsapp",
                              self.tmp_path / f"{name}.log", "asyncio", workers)
        self.started.append(proc)
        return proc.start(wait=wait)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def replicas(tmp_path: Path, pki: PKI, sink: Any, pg_url: str,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Replicas]:
    monkeypatch.setenv("TEST_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("TEST_SPOOL_URL", pg_url)
    group = Replicas(tmp_path, pki, sink.url)
    try:
        yield group
    finally:
        group.stop_all()


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found
