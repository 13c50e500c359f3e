"""Helm chart: lint, render, Kubernetes 1.30 validation, values.schema.json (issue 7, points 1-2)."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml
from crd_schemas import CRD_SCHEMAS
from deployhelpers import ALL_FEATURES, CHART_DIR, by_kind, render_docs

KUBE_VERSION = "1.30.0"
SERVICES = ("isr", "characterize", "calibrate")


def _validate_all(docs: list[dict]) -> list[str]:
    """Validate every object: built-in kinds with kubernetes-validate --strict, CRDs with crd_schemas."""
    kv = pytest.importorskip("kubernetes_validate")
    checked = []
    for doc in docs:
        obj = {k: v for k, v in doc.items() if k != "__template__"}
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[key])
        else:
            kv.validate(obj, KUBE_VERSION, strict=True)
        checked.append(f"{obj['kind']}/{obj['metadata']['name']}")
    return checked


@pytest.mark.parametrize("which", ["default", "production", "all-features"])
def test_lint_strict_passes(helm, which, production_values):
    values = {"default": None, "production": production_values, "all-features": ALL_FEATURES}[which]
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_default_render_is_valid_kubernetes(chart):
    docs = render_docs(chart)
    checked = _validate_all(docs)
    kinds = sorted({c.split("/")[0] for c in checked})
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]
    assert len(by_kind(docs, "Deployment")) == 3 and len(by_kind(docs, "PodDisruptionBudget")) == 3


def test_production_render_is_valid_kubernetes(chart, production_values):
    docs = render_docs(chart, production_values)
    checked = _validate_all(docs)
    kinds = {c.split("/")[0] for c in checked}
    assert {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication",
            "HorizontalPodAutoscaler", "Job"} <= kinds
    assert "Secret" not in kinds  # existingSecret
    deps = by_kind(docs, "Deployment")
    for dep in deps.values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 150
        assert "replicas" not in dep["spec"]  # every service is autoscaled in the example
        env_from = pod["containers"][0]["envFrom"]
        assert {"secretRef": {"name": "calexpress-credentials"}} in env_from


def test_all_features_render_is_valid(chart):
    docs = render_docs(chart, ALL_FEATURES)
    _validate_all(docs)
    so = by_kind(docs, "ScaledObject")["prod-calexpress-isr"]
    trig = so["spec"]["triggers"][0]
    assert trig["metadata"]["consumerGroup"] == "calexpress-isr"
    assert trig["metadata"]["topic"] == "calexpress.raw"
    assert trig["metadata"]["sasl"] == "scram_sha256" and trig["metadata"]["tls"] == "enable"
    assert trig["authenticationRef"]["name"] in by_kind(docs, "TriggerAuthentication")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["prod-calexpress-characterize"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "prod-calexpress-characterize"
    secret = by_kind(docs, "Secret")["prod-calexpress-credentials"]
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
                                    "CALEXPRESS_KAFKA_USERNAME": "u", "CALEXPRESS_KAFKA_PASSWORD": "p"}
    job = by_kind(docs, "Job")["prod-calexpress-topics"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    script = by_kind(docs, "ConfigMap")["prod-calexpress-topics"]["data"]["create_topics.py"]
    compile(script, "create_topics.py", "exec")  # the mounted script is valid Python
    files = by_kind(docs, "ConfigMap")["prod-calexpress-pipeline"]["data"]
    assert files["calibrate_config.py"].splitlines()[1:] == [
        'config.astromRefObjLoader.ref_dataset_name = "gaia_dr2"',
        'config.photoRefObjLoader.ref_dataset_name = "ps1"']
    assert files["isr_config.py"].splitlines()[1:] == ["config.doBias = True"]
    assert files["characterize_config.py"].splitlines()[1:] == []
    for stage, dep in by_kind(docs, "Deployment").items():
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["CALEXPRESS_CONFIG_FILE"] == f"/etc/calexpress/{stage.rsplit('-', 1)[1]}_config.py"


def test_crd_schemas_catch_mistakes(chart):
    """The hand-written CRD schemas are not vacuous: a misspelt field or a bad type fails."""
    docs = render_docs(chart, ALL_FEATURES)
    sm = copy.deepcopy(by_kind(docs, "ServiceMonitor")["prod-calexpress"])
    sm.pop("__template__")
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])
    so = copy.deepcopy(by_kind(docs, "ScaledObject")["prod-calexpress-isr"])
    so.pop("__template__")
    so["spec"]["maxReplicaCount"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


def test_kubernetes_validate_is_strict(chart):
    """kubernetes-validate --strict really rejects an unknown field in a rendered Deployment."""
    kv = pytest.importorskip("kubernetes_validate")
    dep = copy.deepcopy(by_kind(render_docs(chart), "Deployment")["prod-calexpress-isr"])
    dep.pop("__template__")
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, KUBE_VERSION, strict=True)


def test_deployment_contract(chart):
    docs = render_docs(chart)
    deps = by_kind(docs, "Deployment")
    assert sorted(deps) == [f"prod-calexpress-{s}" for s in sorted(SERVICES)]
    env_cm = by_kind(docs, "ConfigMap")["prod-calexpress-env"]["data"]
    assert env_cm["CALEXPRESS_METRICS_HOST"] == "0.0.0.0"  # probes and scrapes come from outside the pod
    assert int(env_cm["CALEXPRESS_SHUTDOWN_GRACE"]) == 60
    for stage in SERVICES:
        dep = deps[f"prod-calexpress-{stage}"]
        assert dep["spec"]["replicas"] == 2
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"][:2] == ["serve", stage]
        assert c["image"] == "ghcr.io/calexpress/calexpress:0.1.0"
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["ports"] == [{"name": "metrics", "containerPort": 9102, "protocol": "TCP"}]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts == {"scratch": "/tmp", "pipeline-config": "/etc/calexpress"}
        assert {"name": "scratch", "emptyDir": {"sizeLimit": "8Gi"}} in pod["volumes"]
        # The grace period covers one CCD (the services' shutdown deadline) plus the final commit.
        assert pod["terminationGracePeriodSeconds"] > int(env_cm["CALEXPRESS_SHUTDOWN_GRACE"])
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["CALEXPRESS_GROUP_ID"] == f"calexpress-{stage}"
        refs = [next(iter(r.values()))["name"] for r in c["envFrom"]]
        assert refs == ["prod-calexpress-env", "prod-calexpress-credentials"]
        sel = dep["spec"]["selector"]["matchLabels"]
        assert sel["app.kubernetes.io/component"] == stage
        assert dep["spec"]["template"]["metadata"]["labels"] == sel
    services = by_kind(docs, "Service")
    assert all(s["spec"]["ports"][0]["port"] == 9102 for s in services.values())
    assert all(s["spec"]["publishNotReadyAddresses"] is True for s in services.values())
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert all(p["spec"]["maxUnavailable"] == 1 for p in pdbs.values())
    pipeline = yaml.safe_load(by_kind(docs, "ConfigMap")["prod-calexpress-pipeline"]["data"]["pipeline.yaml"])
    assert pipeline["camera"] == "simcamA"
    assert pipeline["calibRoot"] == "s3://calexpress/repo/CALIB"
    assert pipeline["refcat"]["location"] == "s3://calexpress/repo/ref_cats"


def test_dashboard_configmap_for_grafana_sidecar(chart):
    docs = render_docs(chart, {"grafanaDashboard": {"folder": "Observatory"}})
    cm = by_kind(docs, "ConfigMap")["prod-calexpress-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Observatory"
    dash = json.loads(cm["data"]["calexpress.json"])
    assert dash["uid"] == "calexpress-overview" and len(dash["panels"]) > 10


def test_prometheus_rule_uses_values(chart):
    docs = render_docs(chart, {"prometheusRule": {"enabled": True},
                               "alerts": {"latencyP95TargetSeconds": 17, "lagThreshold": 333},
                               "services": {"calibrate": {"enabled": False}}})
    rules = by_kind(docs, "PrometheusRule")["prod-calexpress"]["spec"]["groups"][0]["rules"]
    exprs = {r["alert"] + r.get("labels", {}).get("component", ""): r["expr"] for r in rules}
    assert ") > 17" in exprs["CalexpressEndToEndLatencyHigh"]
    assert "> 333" in exprs["CalexpressConsumerLagGrowing"]
    assert "CalexpressServiceDownisr" in exprs and "CalexpressServiceDowncalibrate" not in exprs
    assert "prod-calexpress-calibrate" not in by_kind(docs, "Deployment")


def test_grace_period_must_cover_the_shutdown_deadline(chart, helm):
    with pytest.raises(helm.HelmRenderError, match="must exceed shutdownDeadlineSeconds"):
        chart.render({"shutdownDeadlineSeconds": 100, "terminationGracePeriodSeconds": 90}, name="prod")
    docs = render_docs(chart, {"services": {"isr": {"terminationGracePeriodSeconds": 300}}})
    assert by_kind(docs, "Deployment")["prod-calexpress-isr"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 300


# ---- values.schema.json (acceptance point 2) -----------------------------------------------------------

@pytest.mark.parametrize("bad, where", [
    ({"services": {"isr": {"replicas": "three"}}}, "replicas"),
    ({"metricsPort": "eighty"}, "metricsPort"),
    ({"services": {"calibrate": {"autoscaling": {"enabled": "yes"}}}}, "enabled"),
    ({"kafka": {"securityProtocol": "TLS"}}, "securityProtocol"),
])
def test_schema_rejects_wrong_type(chart, helm, bad, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name="prod")


def test_schema_rejects_unknown_service_name(chart, helm):
    bad = {"services": {"astrometry": {"enabled": True, "replicas": 1}}}
    with pytest.raises(helm.HelmValuesError, match="astrometry"):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name="prod")
    with pytest.raises(helm.HelmValuesError, match="replica"):  # a misspelt field of a service, too
        chart.validate_schema({"services": {"isr": {"replica": 3}}})


def test_schema_accepts_defaults_and_example(chart, production_values):
    chart.validate_schema({})
    chart.validate_schema(production_values)
    # The same schema also holds as plain JSON Schema (draft 7) for editors and CI tools.
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), schema)


def test_readme_documents_every_value():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    readme = (CHART_DIR / "README.md").read_text()
    opaque = {"podSecurityContext", "securityContext", "probes.startup", "probes.liveness",
              "probes.readiness", "topics.resources", "grafanaDashboard.labels", "services.<name>.resources"}

    def keys(prefix, node):
        if isinstance(node, dict) and node and prefix not in opaque:
            for k, v in node.items():
                if prefix == "services":
                    k = "<name>"
                yield from keys(f"{prefix}.{k}" if prefix else k, v)
        else:
            yield prefix

    missing = sorted({k for k in keys("", values) if f"`{k}`" not in readme})
    assert not missing, f"values not in the README table: {missing}"


@pytest.mark.parametrize("stage, task_path", [
    ("isr", "calexpress.isr:IsrTask"),
    ("characterize", "calexpress.characterize:CharacterizeImageTask"),
    ("calibrate", "calexpress.calibrate:CalibrateTask")])
def test_stage_config_files_load_into_the_stage_configs(chart, production_values, tmp_path, stage, task_path):
    """Each `<service>_config.py` the chart mounts loads into that stage's config, as the services do."""
    import importlib

    module, _, name = task_path.partition(":")
    task = getattr(pytest.importorskip(module), name)
    docs = render_docs(chart, production_values)
    path = tmp_path / f"{stage}_config.py"
    path.write_text(by_kind(docs, "ConfigMap")["prod-calexpress-pipeline"]["data"][path.name])
    config = task.ConfigClass()
    config.load(str(path))
    config.validate()
    if stage == "calibrate":
        assert config.astromRefObjLoader.ref_dataset_name == "gaia_dr3"
        assert config.photoRefObjLoader.ref_dataset_name == "ps1_pv3_3pi_20170110"
        assert config.photoCal.magLimitFaint == 22.0
    if stage == "characterize":
        assert config.repair.doCosmicRay is True
    assert importlib.import_module(f"calexpress.{stage}.service").make_processor  # the service that loads it


def test_chart_app_version_is_the_package_version():
    import tomllib

    from deployhelpers import REPO_ROOT

    chart_meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart_meta["appVersion"] == project["version"]  # the default image tag is the package version
