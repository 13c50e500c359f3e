"""Every metric used by the dashboard and the alerts is exported by the services (issue 7, point 4)."""

from __future__ import annotations

import re

import pytest
import yaml
from deployhelpers import RULES_FILE, load_dashboard

#: Series Prometheus itself makes (not exported by the services).
PROMETHEUS_SERIES = {"up"}
_KEYWORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "deriv", "time", "absent", "max", "min",
             "avg", "count", "and", "or", "unless", "offset", "without", "on", "ignoring", "group_left",
             "group_right", "le", "stage", "outcome", "quality", "topic", "component", "cache", "error_class",
             "result", "instance", "job", "bool", "vector", "delta", "irate", "topk", "clamp_min"}


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in load_dashboard()["panels"] for t in p.get("targets", [])]


def rule_queries() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Series names used in a PromQL expression (functions, keywords and label names excluded)."""
    expr = re.sub(r"\{[^}]*\}", "{}", expr)          # label matchers
    expr = re.sub(r"by \([^)]*\)", "", expr)         # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)         # range selectors
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in _KEYWORDS and not re.fullmatch(r"[0-9.e]+", n)
            and not n.startswith("__")}


def exported_series_names() -> set[str]:
    """Sample names the services' registry exposes (counters: _total/_created; histograms: _bucket/...)."""
    metrics = pytest.importorskip("calexpress.metrics", reason="calexpress.metrics does not exist yet")
    names = set()
    for fam in metrics.REGISTRY.collect():
        if fam.type == "counter":
            names |= {fam.name + "_total", fam.name + "_created"}
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(fam.name)
    return names


def test_metric_name_extraction():
    expr = 'histogram_quantile(0.95, sum by (stage, le) (rate(calexpress_x_bucket{stage="a"}[5m])))'
    assert metric_names(expr) == {"calexpress_x_bucket"}
    assert metric_names("time() - max by (stage) (calexpress_last)") == {"calexpress_last"}
    assert metric_names('a_total > 0 and b_created > time() - 600') == {"a_total", "b_created"}


def test_dashboard_and_alert_metrics_exist_in_registry():
    exported = exported_series_names()
    used = set()
    for expr in dashboard_queries() + rule_queries():
        used |= metric_names(expr.replace("$__rate_interval", "5m"))
    missing = sorted(used - exported - PROMETHEUS_SERIES)
    assert not missing, f"not exported by calexpress.metrics.REGISTRY: {missing}"
    # Every metric the contract names is shown somewhere on the dashboard.
    dash_used = set()
    for expr in dashboard_queries():
        dash_used |= metric_names(expr.replace("$__rate_interval", "5m"))
    fams = {re.sub(r"_(bucket|total)$", "", n) for n in dash_used}
    for fam in ("calexpress_stage_duration_seconds", "calexpress_events",
                "calexpress_end_to_end_latency_seconds", "calexpress_inflight", "calexpress_consumer_lag",
                "calexpress_retries", "calexpress_dead_letters", "calexpress_cache_requests",
                "calexpress_ccd_quality", "calexpress_last_ccd_timestamp_seconds"):
        assert fam in fams, fam


def test_dashboard_structure():
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("CCDs per minute (calexp)", "Stage duration percentiles", "Consumer lag", "Cache hit rate",
                   "PSF FWHM", "Photometric zero point", "Astrometric RMS", "Limiting magnitude (5 sigma)",
                   "Dead letters by error class (last hour)"):
        assert needed in titles
    exprs = " ".join(dashboard_queries())
    for q in ("psf_fwhm_arcsec", "zero_point", "astrometric_rms_mas", "limiting_mag"):
        assert f'quality="{q}"' in exprs
    for quant in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quant}, sum by (stage, le)" in exprs
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
