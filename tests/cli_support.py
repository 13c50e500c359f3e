"""Helpers for tests that run the installed console scripts (``processCcd.py``, ``calexpress``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "obs_test" / "data" / "input"
BIN = Path(sys.executable).parent


def run_script(name: str, *args: str, cwd: Path | None = None, timeout: float = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an installed console script (``processCcd.py``, ``calexpress``) and capture its output."""
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"console script {exe} is not installed: run pip install -e .")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


