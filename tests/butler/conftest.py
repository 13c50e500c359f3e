"""Fixtures of the repository tests: a SeaweedFS S3 server on loopback (one per session)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from calexpress.streaming.seaweedfs import SeaweedFS, SeaweedFSError, find_weed

BUCKET = "calexpress-test"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running ``weed mini`` with bucket ``calexpress-test``; calexpress.storage points at it."""
    try:
        find_weed()
    except SeaweedFSError as exc:
        pytest.skip(str(exc))
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), buckets=[BUCKET], start_timeout=40)
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


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
