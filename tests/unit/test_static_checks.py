"""mypy --strict and ruff over the package, when the tools are installed (test extras)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_mypy_strict_passes():
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "sidecar"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:]


def test_ruff_passes():
    if shutil.which("ruff", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("ruff not installed")
    done = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "sidecar"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:]
