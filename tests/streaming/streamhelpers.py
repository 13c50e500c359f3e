"""Helpers of the streaming tests (service subprocesses, topic collection, metric scraping)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from calexpress.streaming.procutil import free_port, stop_process, wait_for

HERE = Path(__file__).resolve().parent


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


class ServiceProcs:
    """Service subprocesses started by a test (stopped at teardown)."""

    def __init__(self, tmp: Path, broker, seaweed) -> None:
        self.tmp = tmp
        self.broker = broker
        self.seaweed = seaweed
        self.procs: list[subprocess.Popen] = []

    def start(self, stage: str, *, prefix: str, repo: str, group: str | None = None, toy: bool = False,
              env: dict | None = None, extra: list[str] | None = None, name: str | None = None):
        port = free_port()
        cmd = [sys.executable, "-m", "calexpress.streaming.cli", "serve", stage, "--brokers",
               self.broker.bootstrap, "--repo", repo, "--topic-prefix", prefix, "--metrics-port", str(port),
               "--backoff-initial", "0.2", "--shutdown-grace", "10", *(extra or [])]
        if group:
            cmd += ["--group-id", group]
        if toy:
            cmd += ["--processor", "toystage:make_processor"]
        full_env = dict(os.environ)
        full_env.update(self.seaweed.env())
        full_env["PYTHONPATH"] = os.pathsep.join([str(HERE), full_env.get("PYTHONPATH", "")])
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        log = open(self.tmp / f"{name or stage}-{port}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
        log.close()
        proc.metrics_port = port  # type: ignore[attr-defined]
        proc.log_path = self.tmp / f"{name or stage}-{port}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200,
                 60, 0.2, f"{stage} service ready")
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            stop_process(p, 15)


def metric_value(port: int, name: str, **labels) -> float:
    """Sum of a metric's samples matching the labels, scraped from a service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def _collect(bootstrap: str, topic: str, n: int | None, timeout: float, idle: float, until=None):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    out = []
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None and time.monotonic() < deadline:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic)
            if not parts:
                parts = None
                await asyncio.sleep(0.2)
        if parts is None:
            return out
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300)
            for msgs in batch.values():
                out.extend(msgs)
                if msgs:
                    last = time.monotonic()
            if n is not None and len(out) >= n and time.monotonic() - last > idle:
                break
            if until is not None and until(out) and time.monotonic() - last > idle:
                break
    finally:
        await c.stop()
    return out


def collect(bootstrap: str, topic: str, n: int | None = None, timeout: float = 60.0, idle: float = 1.0,
            until=None):
    """Messages of ``topic`` from the beginning.

    Waits for ``n`` messages or for ``until(messages)`` to be true (then ``idle`` s
    more, to catch extra messages), or ``timeout``.
    """
    return asyncio.run(_collect(bootstrap, topic, n, timeout, idle, until))


def publish_raws(files: list[str], brokers: str, topic: str, base: str):
    """Announce raws, ingesting each camera's frames into its own repository ``<base>/<camera>``."""
    from calexpress.streaming.announce import announce_raws

    events = []
    for cam in ("obs_test", "simcam"):
        mine = [f for f in files if f"/{cam}" in f]
        if mine:
            events += announce_raws(mine, brokers=brokers, topic=topic, repo=f"{base}/{cam}")
    return events


def list_objects(prefix: str, contains: str = "") -> dict[str, str]:
    """URI -> ETag of every object under ``prefix`` whose key contains ``contains``."""
    from calexpress import storage

    fs, path = storage.get_filesystem(prefix)
    fs.invalidate_cache()
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    return {f"s3://{k}": str(v.get("ETag")) for k, v in found.items() if contains in k}
