"""Helpers of the deployment integration test: a Prometheus scraping the services as the chart labels them,
and evaluation of the Grafana dashboard's queries through Prometheus's HTTP API."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from calexpress.streaming.prometheus_server import PrometheusServer
from deployhelpers import RULES_FILE, load_dashboard

#: Grafana's interval variables, replaced by fixed windows for evaluation outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "1h"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the Grafana variables substituted) of every dashboard target."""
    out = []
    for panel in load_dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


class CalexpressPrometheus(PrometheusServer):
    """Prometheus scraping the services like the chart's ServiceMonitor does: job ``calexpress`` and a
    ``component`` label per service, with the alert rules of helm/prometheus loaded.

    Parameters
    ----------
    workdir : path
        Config, TSDB and log folder.
    components : `dict` [`str`, `str`]
        Service name (isr, characterize, calibrate) -> ``host:port`` of its /metrics.
    """

    def __init__(self, workdir, components: dict[str, str], scrape_interval: str = "1s") -> None:
        super().__init__(workdir, {"calexpress": list(components.values())}, scrape_interval=scrape_interval)
        self.components = components

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        rules = self.workdir / "calexpress-rules.yml"
        rules.write_text(RULES_FILE.read_text())
        cfg = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "calexpress",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [addr], "labels": {"component": name}}
                                   for name, addr in self.components.items()],
            }],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body}")
        return body["data"]


def finite_values(result: list[dict]) -> list[float]:
    """The finite sample values of an instant-query result."""
    vals = []
    for series in result:
        v = float(series["value"][1])
        if math.isfinite(v):
            vals.append(v)
    return vals


def wait_for_scrapes(prom: CalexpressPrometheus, n_targets: int, timeout: float = 60.0) -> None:
    """Wait until every target is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = prom.query('sum(up{job="calexpress"})')
        if res and float(res[0]["value"][1]) >= n_targets:
            return
        time.sleep(0.5)
    raise TimeoutError(f"not all {n_targets} calexpress targets up: {prom.targets_health()}")


def empty_dashboard_queries(prom: CalexpressPrometheus) -> list[str]:
    """Dashboard queries that return no series or only NaN/Inf values (empty list: all have data)."""
    bad = []
    for title, expr in dashboard_queries():
        result = prom.query(expr)
        if not finite_values(result):
            bad.append(f"{title}: {expr} -> {result}")
    return bad
