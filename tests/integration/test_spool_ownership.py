"""One `serve` process per spool: a second one on the same file refuses to start."""

from __future__ import annotations

import subprocess
import sys

from conftest import free_port


def test_second_server_on_the_same_spool_is_refused(start_sidecar):
    first = start_sidecar()
    config = first.config_path.read_text()
    # Same spool, other ports.
    other = first.config_path.with_name("other.yaml")
    other.write_text(config.replace(f"port: {first.port}", f"port: {free_port()}")
                     .replace(f"port: {first.admin_port}", f"port: {free_port()}"))
    done = subprocess.run([sys.executable, "-m", "sidecar", "serve", "-c", str(other)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "in use by another sidecar serve" in done.stderr
    # The first one is unaffected, and CLI commands still read the spool alongside it.
    stats = subprocess.run([sys.executable, "-m", "sidecar", "spool", "stats", "-c",
                            str(first.config_path)], capture_output=True, text=True, timeout=30)
    assert stats.returncode == 0, stats.stderr
    assert first.proc.poll() is None
