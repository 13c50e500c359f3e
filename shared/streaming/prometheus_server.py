"""Run a local Prometheus server (Debian's ``prometheus`` binary) that scrapes the services."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from .procutil import free_port, stop_process, wait_for, wait_for_port

__all__ = ["PrometheusServer", "prometheus_config"]

log = logging.getLogger(__name__)


def prometheus_config(targets: dict[str, list[str]], scrape_interval: str = "1s") -> dict:
    """Return a Prometheus config scraping ``targets`` (job name -> ``host:port`` list)."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(addrs)}]}
            for job, addrs in targets.items()
        ],
    }


class PrometheusServer:
    """A Prometheus process on loopback with a generated config.

    Parameters
    ----------
    workdir : path
        Holds ``prometheus.yml``, the TSDB and the log.
    targets : `dict` [`str`, `list` [`str`]]
        Job name -> ``host:port`` of ``/metrics`` endpoints.
    port : `int`, optional
        Web port; free one by default.
    scrape_interval : `str`
        Prometheus duration, e.g. ``"1s"``.
    binary : `str`, optional
        Path of ``prometheus``; found on ``PATH`` by default.
    """

    def __init__(self, workdir: str | os.PathLike, targets: dict[str, list[str]], port: int | None = None,
                 scrape_interval: str = "1s", binary: str | None = None, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.targets = targets
        self.host = host
        self.port = port or free_port(host)
        self.scrape_interval = scrape_interval
        self.binary = binary or shutil.which("prometheus") or "/usr/bin/prometheus"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the web API."""
        return f"http://{self.host}:{self.port}"

    def write_config(self) -> Path:
        """Write ``prometheus.yml`` and return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(prometheus_config(self.targets, self.scrape_interval)))
        return path

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Start Prometheus and wait until ``/-/ready`` answers."""
        if not Path(self.binary).exists():
            raise FileNotFoundError(f"prometheus not found ({self.binary}): apt-get install prometheus")
        cfg = self.write_config()
        cmd = [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
               f"--web.listen-address={self.host}:{self.port}", "--web.enable-lifecycle"]
        logf = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        wait_for_port(self.host, self.port, timeout, self.proc)
        wait_for(lambda: urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200,
                 timeout, 0.2, "prometheus ready")
        return self

    def query(self, promql: str) -> list[dict]:
        """Run an instant query; return the ``data.result`` list."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body}")
        return body["data"]["result"]

    def targets_health(self) -> dict[str, str]:
        """Return scrape URL -> health (``up``/``down``/``unknown``)."""
        with urllib.request.urlopen(self.url + "/api/v1/targets", timeout=10) as resp:
            body = json.load(resp)
        return {t["scrapeUrl"]: t["health"] for t in body["data"]["activeTargets"]}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Prometheus."""
        stop_process(self.proc, timeout)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
