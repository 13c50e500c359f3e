"""Fixtures of the repository tests (the SeaweedFS server is in ``tests/conftest.py``)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from calexpress.streaming.seaweedfs import SeaweedFS

BUCKET = "calexpress-test"


@pytest.fixture
def s3_prefix(seaweedfs: SeaweedFS) -> str:
    """A fresh ``s3://calexpress-test/<random>`` prefix."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def obs_test_copy(obs_test_repo, tmp_path) -> Path:
    """A writable copy of the obs_test input repository (the original is read-only)."""
    dest = tmp_path / "obs_test_input"
    shutil.copytree(obs_test_repo, dest)
    for dirpath, _dirs, files in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for n in files:
            os.chmod(os.path.join(dirpath, n), 0o644)
    return dest
