"""Prometheus alert rules: one source, promtool check and unit tests (issue 7, point 3)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from deployhelpers import PROMETHEUS_DIR, RULES_FILE, by_kind, render_docs

REQUIRED_ALERTS = {
    "CalexpressDeadLetters",         # dead letters appearing
    "CalexpressConsumerLagGrowing",  # consumer lag growing for N minutes
    "CalexpressEndToEndLatencyHigh",  # p95 end-to-end latency above target
    "CalexpressNoCalexpOutput",      # raw events arriving with no calexp events
    "CalexpressServiceDown",         # a service down
}


def _promtool() -> str:
    path = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if path is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def _rules(path=RULES_FILE) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def test_standalone_rules_file_matches_the_chart(chart):
    """helm/prometheus/calexpress-rules.yml is the chart's PrometheusRule rendered with default values."""
    docs = render_docs(chart, {"prometheusRule": {"enabled": True}})
    spec = by_kind(docs, "PrometheusRule")["prod-calexpress"]["spec"]
    assert yaml.safe_load(RULES_FILE.read_text()) == spec
    # ... and byte for byte what the generator writes.
    sys.path.insert(0, str(PROMETHEUS_DIR))
    try:
        import render_rules
    finally:
        sys.path.pop(0)
    assert render_rules.render_rules() == RULES_FILE.read_text(), "run python helm/prometheus/render_rules.py"


def test_every_required_alert_has_a_runbook():
    rules = _rules()
    names = {r["alert"] for r in rules if "alert" in r}
    assert REQUIRED_ALERTS <= names
    for r in rules:
        ann = r["annotations"]
        assert ann["runbook_url"].startswith("https://") and "#runbook-" in ann["runbook_url"]
        assert len(ann["runbook"].split()) >= 8, r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}
    down = [r for r in rules if r["alert"] == "CalexpressServiceDown"]
    assert sorted(r["labels"]["component"] for r in down) == ["calibrate", "characterize", "isr"]


def test_promtool_check_rules():
    res = subprocess.run([_promtool(), "check", "rules", str(RULES_FILE)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in res.stdout


def test_promtool_unit_tests_fire_each_alert():
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
             if t["exp_alerts"]}
    assert REQUIRED_ALERTS | {"CalexpressTargetDown"} <= fired  # each alert has a case where it fires
    res = subprocess.run([_promtool(), "test", "rules", "rules_test.yml"], cwd=PROMETHEUS_DIR,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_unit_tests_can_fail(tmp_path):
    """Raising the latency target above the synthetic p95 (116.7 s) makes the unit tests fail."""
    text = RULES_FILE.read_text().replace(") > 60\n", ") > 200\n")
    assert text != RULES_FILE.read_text()
    (tmp_path / "calexpress-rules.yml").write_text(text)
    shutil.copy(PROMETHEUS_DIR / "rules_test.yml", tmp_path / "rules_test.yml")
    res = subprocess.run([_promtool(), "test", "rules", "rules_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "CalexpressEndToEndLatencyHigh" in res.stdout + res.stderr


def test_example_prometheus_config_is_valid():
    res = subprocess.run([_promtool(), "check", "config", "prometheus.example.yml"], cwd=PROMETHEUS_DIR,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout
