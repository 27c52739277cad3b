"""`serve --workers auto`: one ingest process per usable CPU, cgroup quota included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.server.process import default_workers

CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", CPUS),
    ("100000 100000\n", 1),
    ("150000 100000\n", min(CPUS, 2)),
    ("1000 100000\n", 1),
    ("garbage\n", CPUS),
])
def test_quota_caps_the_affinity(tmp_path: Path, cpu_max: str, expected: int) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert default_workers(path) == expected


def test_no_cgroup_file_means_affinity(tmp_path: Path) -> None:
    assert default_workers(tmp_path / "missing") == CPUS
