"""The chart's topic-creation script (files/create_topics.py) against a real Tansu broker on loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from deployhelpers import CHART_DIR

SCRIPT = CHART_DIR / "files" / "create_topics.py"


async def _topics(bootstrap: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith("obs.")]
        meta = await admin.describe_topics(names)
        return {m["topic"]: len(m["partitions"]) for m in meta}
    finally:
        await admin.close()


@pytest.mark.integration
def test_create_topics_script_creates_missing_topics_once(tmp_path):
    tansu = pytest.importorskip("calexpress.streaming.tansu")
    try:
        tansu.find_tansu_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    broker = tansu.TansuBroker(tmp_path).start()
    try:
        env = dict(os.environ, CALEXPRESS_BROKERS=broker.bootstrap, CALEXPRESS_TOPIC_PREFIX="obs.",
                   TOPIC_PARTITIONS="4", TOPIC_REPLICATION_FACTOR="1", DLQ_PARTITIONS="1")
        cmd = [sys.executable, str(SCRIPT)]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("created: ") and first.stdout.count("obs.") == 7
        assert asyncio.run(_topics(broker.bootstrap)) == {
            "obs.raw": 4, "obs.postisr": 4, "obs.characterized": 4, "obs.calexp": 4,
            "obs.raw.dlq": 1, "obs.postisr.dlq": 1, "obs.characterized.dlq": 1}
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "nothing (all topics exist)" in again.stdout
    finally:
        broker.stop()
    # With the broker gone the Job fails with a one-line error (so Kubernetes retries it).
    env["CALEXPRESS_BROKERS"] = broker.bootstrap
    down = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1 and down.stderr.startswith("create_topics: ")
    assert len(down.stderr.strip().splitlines()) == 1
