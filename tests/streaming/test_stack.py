"""``calexpress stack up|down`` (issue 6, point 7): Tansu + SeaweedFS + three services on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from calexpress.streaming.procutil import pid_alive

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calexpress.streaming.cli", *args], capture_output=True,
                          text=True, timeout=180)


def test_stack_up_serves_and_down_stops(tmp_path):
    from calexpress.streaming.tansu import find_tansu_binary

    try:
        find_tansu_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    d = tmp_path / "stack"
    up = _cli("stack", "up", "--dir", str(d), "--metrics-base-port", "0")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        info = json.loads(up.stdout)
        assert set(info["pids"]) == {"seaweedfs", "tansu", "isr", "characterize", "calibrate"}
        assert info["tansu_storage"] == "s3://tansu/" and info["brokers"].startswith("127.0.0.1:")
        assert "secret" not in up.stdout.lower() and "secret" not in up.stderr.lower()
        creds = json.loads((d / "credentials.json").read_text())
        assert creds["secret_key"] not in up.stdout + up.stderr
        assert oct((d / "credentials.json").stat().st_mode & 0o777) == "0o600"
        for stage, addr in info["metrics"].items():
            assert addr.startswith("127.0.0.1:")
            body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
            assert f'calexpress_inflight{{stage="{stage}"}} 0.0' in body
        for addr in info["metrics"].values():  # broker and object store reachable
            for _ in range(100):
                try:
                    if urllib.request.urlopen(f"http://{addr}/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                pytest.fail(f"{addr} never ready")
        for stage in ("isr", "characterize", "calibrate"):
            assert creds["secret_key"] not in (d / "logs" / f"{stage}.log").read_text()
        status = json.loads(_cli("stack", "status", "--dir", str(d)).stdout)
        assert all(status["alive"].values())
    finally:
        down = _cli("stack", "down", "--dir", str(d))
    assert down.returncode == 0, down.stderr[-2000:]
    assert not any(pid_alive(p) for p in info["pids"].values())
