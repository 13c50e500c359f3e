"""Fixtures for the processCcd.py tests: one real run over the bundled obs_test example."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_support import EXAMPLE, REPO_ROOT, run_script


@pytest.fixture(scope="session")
def obs_test_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README main command, run once (processCcd.py on examples/obs_test with a bare --id)."""
    out = tmp_path_factory.mktemp("processCcdOut") / "processCcdOut"
    proc = run_script("processCcd.py", str(EXAMPLE), "--output", str(out), "--id", cwd=REPO_ROOT)
    return out, proc
