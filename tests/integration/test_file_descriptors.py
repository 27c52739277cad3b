"""File descriptors: the soft RLIMIT_NOFILE is raised at start, a max_connections the
limit cannot hold is refused in one line, and idle TCP connections on the public port
(no ClientHello, ever) cannot starve the admin listener."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import VERIFY_TOKEN, write_config


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def _capped(soft: int, hard: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_soft_limit_is_raised_to_the_hard_limit(start_sidecar, loop):
    sidecar = start_sidecar(loop=loop, nofile=(256, 4096))
    assert sidecar.proc is not None
    assert _soft_nofile(sidecar.proc.pid) == 4096


def test_serve_refuses_a_max_connections_the_limit_cannot_hold(start_sidecar):
    sidecar = start_sidecar(nofile=(512, 512), wait=False)
    assert sidecar.proc is not None
    assert sidecar.proc.wait(timeout=20) != 0
    lines = [line for line in sidecar.log().splitlines() if line.strip()]
    assert len(lines) == 1 and "limits.max_connections" in lines[0], lines
    assert "512" in lines[0]


def test_config_check_refuses_it_too(tmp_path: Path, pki, sink, monkeypatch):
    monkeypatch.setenv("TEST_APP_SECRET", "x")
    config = write_config(tmp_path, port=8443, admin_port=9090, upstream_url=sink.url,
                          spool_path=tmp_path / "spool.db")
    run = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", "-c", str(config)],
                         capture_output=True, text=True, timeout=60, preexec_fn=_capped(512, 512))
    assert run.returncode == 2
    assert run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert "limits.max_connections" in run.stderr
    ok = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", "-c", str(config)],
                        capture_output=True, text=True, timeout=60,
                        preexec_fn=_capped(512, 4096))  # soft is raised, hard counts
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_idle_connections_on_the_public_port_cannot_starve_the_admin_listener(
        start_sidecar, loop):
    # 50 connections need 50 + 100 (backlog) + 32 (upstream) + 256 descriptors: 600 hold
    # them; 900 idle TCP connections would not, were they all accepted and kept.
    sidecar = start_sidecar(loop=loop, nofile=(600, 600),
                            extra="limits: {max_connections: 50}\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle: list[socket.socket] = []
    try:
        for _ in range(900):
            try:
                idle.append(socket.create_connection(("127.0.0.1", sidecar.port), timeout=2))
            except OSError:
                break  # the backlog is full: the kernel holds the rest, not the sidecar
        time.sleep(1.0)
        for _ in range(3):
            r = httpx.get(sidecar.admin_url + "/healthz", timeout=3)
            assert r.status_code == 200
        assert "sidecar_open_connections" in httpx.get(sidecar.admin_url + "/metrics",
                                                        timeout=3).text
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 15
    while True:  # the cap frees up as the server notices the closes
        try:
            with sidecar.client() as c:
                r = c.get(sidecar.url, params={"hub.mode": "subscribe",
                                               "hub.verify_token": VERIFY_TOKEN,
                                               "hub.challenge": "back"})
            assert r.status_code == 200 and r.text == "back"
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert "out of system resource" not in sidecar.log()
    assert os.path.exists(f"/proc/{sidecar.proc.pid}")
