"""Shared pytest fixtures: where the reference data in ``../shared`` lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The data folder beside the project (``../shared``), or ``$CALEXPRESS_SHARED``.
SHARED_DIR = Path(os.environ.get("CALEXPRESS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DATA_DIR = SHARED_DIR / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found: {path} (set CALEXPRESS_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when absent."""
    return _need(DATA_DIR)


@pytest.fixture(scope="session")
def simcam_dir() -> Path:
    """``../shared/data/simcam/simcamA``."""
    return _need(DATA_DIR / "simcam" / "simcamA")


@pytest.fixture(scope="session")
def obs_test_repo() -> Path:
    """The Gen2 obs_test input repository (``../shared/data/obs_test/data/input``)."""
    return _need(DATA_DIR / "obs_test" / "data" / "input")


@pytest.fixture(scope="session")
def nickel_dir() -> Path:
    """``../shared/data/nickel``."""
    return _need(DATA_DIR / "nickel")


#: The bucket the session's SeaweedFS server creates.
BUCKET = "calexpress-test"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A running ``weed mini`` with bucket ``calexpress-test``; calexpress.storage points at it."""
    from calexpress.streaming.seaweedfs import SeaweedFS, SeaweedFSError, find_weed

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
