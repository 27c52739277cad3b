"""A ``--workers N`` parent killed outright leaves its metrics folder behind; the next
start removes the folders of parents that no longer exist, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sidecar.server.supervisor import remove_stale_metrics_dirs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_the_folders_of_dead_parents_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"sidecar-metrics-{_dead_pid()}-abc"
    alive = tmp_path / f"sidecar-metrics-{os.getpid()}-def"
    old_style = tmp_path / "sidecar-metrics-xyz123"  # no pid in its name: left alone
    other = tmp_path / "something-else-1-2"
    for folder in (dead, alive, old_style, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    remove_stale_metrics_dirs(tmp_path)
    assert not dead.exists()
    assert alive.exists() and old_style.exists() and other.exists()
