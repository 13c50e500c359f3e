"""``calexpress stack up|down|status``: a local streaming stack on loopback.

Starts SeaweedFS (S3, `calexpress.streaming.seaweedfs`), a Tansu broker (its log
on the same SeaweedFS when ``storage="s3"``) and the three stage services as
separate processes from the installed packages.  State (pids, ports) is kept in
``<dir>/stack.json``; S3 credentials in ``<dir>/credentials.json`` (mode 0600),
passed to the services through the environment, never on a command line.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .procutil import free_port, pid_alive, stop_pid, wait_for

__all__ = ["STACK_STAGES", "stack_down", "stack_status", "stack_up", "start_service_process"]

log = logging.getLogger(__name__)

STACK_STAGES = ("isr", "characterize", "calibrate")


def _credentials(d: Path) -> dict[str, str]:
    path = d / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    creds = {"access_key": "calexpress-" + secrets.token_hex(4), "secret_key": secrets.token_hex(16)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


def start_service_process(stage: str, *, brokers: str, repo: str, s3_env: dict[str, str], metrics_port: int,
                          log_path: Path, extra_args: list[str] | None = None,
                          extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``calexpress serve <stage>`` as a child process (own session) logging to ``log_path``."""
    cmd = [sys.executable, "-m", "calexpress.streaming.cli", "serve", stage, "--brokers", brokers,
           "--repo", repo, "--metrics-port", str(metrics_port), *(extra_args or [])]
    env = dict(os.environ)
    env.update(s3_env)
    env.update(extra_env or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stack_up(directory: str | os.PathLike, *, storage: str = "s3", camera_repo: str | None = None,
             metrics_base_port: int = 9102, partitions: int = 3, timeout: float = 60.0) -> dict[str, Any]:
    """Start the stack; return its description (also written to ``<dir>/stack.json``)."""
    from .seaweedfs import SeaweedFS
    from .tansu import TansuBroker, create_topics

    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if (d / "stack.json").exists() and any(pid_alive(p) for p in stack_status(d)["pids"].values()):
        raise RuntimeError(f"a stack is already running in {d}; run 'calexpress stack down --dir {d}' first")
    creds = _credentials(d)
    sw = SeaweedFS(d / "seaweedfs", buckets=["calexpress", "tansu"], access_key=creds["access_key"],
                   secret_key=creds["secret_key"]).start()
    s3_env = sw.env()
    tansu_storage = "s3://tansu/" if storage == "s3" else "memory://tansu/"
    broker = TansuBroker(d, storage=tansu_storage, s3_endpoint=sw.endpoint_url, s3_key=creds["access_key"],
                         s3_secret=creds["secret_key"]).start()
    prefix = "calexpress."
    topics = [prefix + t for t in ("raw", "postisr", "characterized", "calexp")]
    create_topics(broker.bootstrap, topics + [t + ".dlq" for t in topics[:3]], partitions)
    repo = camera_repo or "s3://calexpress/repo"
    info: dict[str, Any] = {
        "dir": str(d), "brokers": broker.bootstrap, "s3_endpoint": sw.endpoint_url, "repo": repo,
        "tansu_storage": tansu_storage, "pids": {"seaweedfs": sw.process.pid, "tansu": broker.proc.pid},
        "metrics": {}, "started_at": time.time(),
    }
    for i, stage in enumerate(STACK_STAGES):
        port = free_port() if metrics_base_port == 0 else metrics_base_port + i
        proc = start_service_process(stage, brokers=broker.bootstrap, repo=repo, s3_env=s3_env,
                                     metrics_port=port, log_path=d / "logs" / f"{stage}.log")
        info["pids"][stage] = proc.pid
        info["metrics"][stage] = f"127.0.0.1:{port}"
    (d / "stack.json").write_text(json.dumps(info, indent=1))
    import urllib.request

    for stage, addr in info["metrics"].items():
        wait_for(lambda a=addr: urllib.request.urlopen(f"http://{a}/healthz", timeout=1).status == 200,
                 timeout, 0.2, f"{stage} service /healthz")
    log.info("stack up in %s: brokers %s, S3 %s", d, broker.bootstrap, sw.endpoint_url)
    return info


def stack_status(directory: str | os.PathLike) -> dict[str, Any]:
    """The stack description with each process's liveness."""
    d = Path(directory)
    path = d / "stack.json"
    if not path.exists():
        return {"dir": str(d), "pids": {}, "alive": {}}
    info = json.loads(path.read_text())
    info["alive"] = {name: pid_alive(pid) for name, pid in info["pids"].items()}
    return info


def stack_down(directory: str | os.PathLike, timeout: float = 15.0) -> None:
    """Stop the services, then Tansu, then SeaweedFS (SIGTERM, SIGKILL after ``timeout``)."""
    d = Path(directory)
    info = stack_status(d)
    pids = info.get("pids", {})
    for name in (*STACK_STAGES, "tansu", "seaweedfs"):
        pid = pids.get(name)
        if pid is None:
            continue
        if name == "seaweedfs":
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        stop_pid(pid, timeout)
    if (d / "stack.json").exists():
        (d / "stack.json").rename(d / "stack.stopped.json")
