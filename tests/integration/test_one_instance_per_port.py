"""One `sidecar serve` per host:port, whatever the worker count: a second instance with
its own spool and admin port, on a port one already serves, refuses to start with one
line (with --workers >= 2 both would otherwise share the port through SO_REUSEPORT)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port, write_config


def _second(first, tmp_path, workers: int) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "second"
    folder.mkdir(exist_ok=True)
    (folder / "certs").symlink_to(first.pki.dir)
    config = write_config(folder, port=first.port, admin_port=free_port(),
                          upstream_url="http://127.0.0.1:9/events",
                          spool_path=folder / "var" / "spool.db")
    return subprocess.run([sys.executable, "-m", "sidecar", "serve", "-c", str(config),
                           "--workers", str(workers)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("first_workers, second_workers", [(2, 2), (1, 2), (2, 1)])
def test_a_second_instance_on_a_served_port_is_refused(start_sidecar, tmp_path,
                                                       first_workers, second_workers):
    first = start_sidecar(workers=first_workers)
    done = _second(first, tmp_path, second_workers)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{first.port}" in done.stderr
    assert "already served by another sidecar serve" in done.stderr \
        or "Address already in use" in done.stderr
    assert first.proc.poll() is None


def test_the_lock_is_gone_once_the_first_instance_is_killed(start_sidecar, tmp_path):
    first = start_sidecar(workers=2)
    first.stop(signal.SIGKILL)  # no clean-up of its own: the kernel frees the lock
    deadline = time.monotonic() + 30
    while True:  # its ingest processes notice the dead parent and drain (bounded)
        second = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "-c", str(first.config_path),
             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            rc = second.wait(timeout=4)
        except subprocess.TimeoutExpired:
            rc = None  # still running: it started
        if rc is None:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
            return
        err = second.stderr.read() if second.stderr else ""
        assert "Address already in use" in err, err  # only the draining orphans, never a lock
        assert time.monotonic() < deadline, "never started after the first was killed"
        time.sleep(0.5)
