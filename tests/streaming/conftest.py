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


