"""Fixtures of the streaming tests: a real SeaweedFS and a real Tansu broker on loopback."""

from __future__ import annotations

import os

import pytest
from streamhelpers import ServiceProcs


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A SeaweedFS S3 server; its credentials are exported to the environment for the session."""
    from calexpress.streaming.seaweedfs import SeaweedFS, SeaweedFSError

    try:
        sw = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), buckets=["calexpress", "tansu"]).start()
    except SeaweedFSError as exc:
        pytest.skip(f"SeaweedFS not available: {exc}")
    saved = {k: os.environ.get(k) for k in sw.env()}
    os.environ.update(sw.env())
    yield sw
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    sw.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A Tansu broker with memory storage."""
    from calexpress.streaming.tansu import TansuBroker, find_tansu_binary

    try:
        find_tansu_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    b = TansuBroker(tmp_path_factory.mktemp("tansu")).start()
    yield b
    b.stop()


@pytest.fixture
def services(tmp_path, broker, seaweed):
    s = ServiceProcs(tmp_path, broker, seaweed)
    yield s
    s.stop_all()




@pytest.fixture(scope="session")
def obs_test_s3(seaweed, obs_test_repo):
    """The obs_test Gen2 repository (raws, calibrations, registries) copied once into S3; its URL."""
    import uuid

    from calexpress import storage

    url = f"s3://calexpress/obs-{uuid.uuid4().hex[:8]}/obs_test"
    for path in sorted(obs_test_repo.rglob("*")):
        if path.is_file():
            storage.put_local_file(str(path), storage.join(url, str(path.relative_to(obs_test_repo))))
    return url


@pytest.fixture(scope="session")
def obs_test_raws(obs_test_repo):
    """The three obs_test raw frames."""
    files = sorted(str(p) for p in (obs_test_repo / "raw").glob("*.fits*"))
    assert len(files) == 3
    return files
