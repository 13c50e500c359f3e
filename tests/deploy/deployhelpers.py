"""Constants and helpers of the deployment tests (importable: the conftest holds only fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "calexpress"
PRODUCTION_VALUES = REPO_ROOT / "helm" / "examples" / "production-values.yaml"
PROMETHEUS_DIR = REPO_ROOT / "helm" / "prometheus"
DASHBOARD_FILE = CHART_DIR / "files" / "calexpress-dashboard.json"
RULES_FILE = PROMETHEUS_DIR / "calexpress-rules.yml"

#: Every optional feature switched on (SASL, KEDA and HPA, ServiceMonitor, PrometheusRule, topic Job).
ALL_FEATURES = {
    "kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-256",
              "username": "u", "password": "p"},
    "s3": {"endpoint": "http://s3.local:8333", "accessKeyId": "AK", "secretAccessKey": "SK"},
    "services": {"isr": {"autoscaling": {"enabled": True, "type": "keda"},
                         "configOverrides": "config.doBias = True\n"},
                 "characterize": {"autoscaling": {"enabled": True, "type": "hpa"}}},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "topics": {"create": True},
    "pipeline": {"refcat": {"astrometry": "gaia_dr2", "photometry": "ps1"}},
}


def render_docs(chart, values: dict | None = None, name: str = "prod",
                namespace: str = "astro") -> list[dict]:
    """Render the chart and return every Kubernetes object (NOTES.txt excluded)."""
    out = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())
