"""Issue 7, acceptance point 5: the three services and Debian's Prometheus on loopback process real CCDs,
and every query of the Grafana dashboard returns data through Prometheus's HTTP API.

Runs the real science stages on the three simcamA raws with a real SeaweedFS (S3) and a real Tansu (Kafka)
broker. Each service is started with the command line and environment the Helm chart gives its container
(rendered ConfigMaps, Secret and Deployment: `calexpress serve <stage>`, brokers, S3 endpoint and keys,
repository, group id, stage config file), so the chart's settings are the ones the services really read.
Prometheus scrapes the services the way the chart's ServiceMonitor labels them (job ``calexpress``, label
``component``) and loads the alert rules of helm/prometheus. One malformed message is sent to the ``raw``
topic so that the dead-letter panels and the dead-letter alert have something to show.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from chartrun import pod_process_spec
from deployhelpers import CHART_DIR, render_docs
from promcheck import CalexpressPrometheus, dashboard_queries, empty_dashboard_queries, finite_values

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ("isr", "characterize", "calibrate")
PREFIX = "calexpress."
REPO = "s3://calexpress/repo"
QUALITY_KEYS = ("psf_fwhm_arcsec", "zero_point", "astrometric_rms_mas", "limiting_mag")


def _require_everything() -> None:
    if shutil.which("prometheus") is None and not os.path.exists("/usr/bin/prometheus"):
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    missing = [s for s in STAGES if importlib.util.find_spec(f"calexpress.{s}.service") is None]
    if missing:
        names = ", ".join(f"calexpress.{s}.service" for s in missing)
        pytest.skip(f"stage services not available yet: {names}")
    from calexpress.streaming.tansu import find_tansu_binary

    try:
        find_tansu_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _stage_simcam_repo(simcam_dir) -> list[str]:
    """Ingest the simcamA raws and calibrations into the S3 repository and upload its reference catalog."""
    from calexpress import storage
    from calexpress.ingest import ingest_calibs, ingest_raws

    raws = sorted(glob.glob(str(simcam_dir / "raw" / "*.fits*")))
    assert not ingest_raws(REPO, "simcamA", raws, mode="copy").failed
    calibs = [c for c in sorted(glob.glob(str(simcam_dir / "calib" / "*"))) if not c.endswith(".ecsv")]
    assert not ingest_calibs(REPO, calibs, mode="copy").failed  # (the defects also come as FITS)
    # Under its own name and under the loaders' default name (ref_dataset_name "cal_ref_cat").
    for name in ("simcam_refcat", "cal_ref_cat"):
        for path in sorted(glob.glob(str(simcam_dir / "refcat" / "simcam_refcat" / "*"))):
            storage.put_local_file(path, f"{REPO}/ref_cats/{name}/{os.path.basename(path)}")
    return raws


@pytest.fixture(scope="module")
def run(tmp_path_factory, simcam_dir, helm):
    """Start everything, process the three simcamA CCDs plus one malformed message; yield the state."""
    _require_everything()
    from calexpress.events import decode_event
    from calexpress.streaming.announce import announce_raws, send_events
    from calexpress.streaming.procutil import free_port, stop_process, wait_for
    from calexpress.streaming.seaweedfs import SeaweedFS
    from calexpress.streaming.tansu import TansuBroker, create_topics

    tmp = tmp_path_factory.mktemp("deploy-integration")
    sw = SeaweedFS(tmp / "seaweedfs", buckets=["calexpress"]).start()
    saved = {k: os.environ.get(k) for k in sw.env()}
    os.environ.update(sw.env())
    broker = prom = None
    procs = []
    try:
        broker = TansuBroker(tmp / "tansu").start()
        topics = [PREFIX + t for t in ("raw", "postisr", "characterized", "calexp")]
        create_topics(broker.bootstrap, topics + [t + ".dlq" for t in topics[:3]], 3)
        raws = _stage_simcam_repo(simcam_dir)
        # The services run with the command line and environment the chart gives its containers.
        docs = render_docs(helm.Chart.load(CHART_DIR), {
            "kafka": {"brokers": broker.bootstrap},
            "s3": {"endpoint": sw.endpoint_url, "accessKeyId": sw.access_key,
                   "secretAccessKey": sw.secret_key},
            "repository": REPO, "collection": "live"})
        components = {}
        for stage in STAGES:
            port = free_port()
            # Three "pods" share one host here: loopback and one port each instead of 0.0.0.0:9102.
            argv, env = pod_process_spec(docs, stage, tmp / "pods", overrides={
                "CALEXPRESS_METRICS_HOST": "127.0.0.1", "CALEXPRESS_METRICS_PORT": str(port)})
            with open(tmp / f"{stage}.log", "ab") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
            components[stage] = f"127.0.0.1:{port}"
        for stage, addr in components.items():
            wait_for(lambda a=addr: urllib.request.urlopen(f"http://{a}/readyz", timeout=1).status == 200,
                     120, 0.3, f"{stage} service ready")
        prom = CalexpressPrometheus(tmp / "prometheus", components).start()
        # Scrape before any CCD so that counters and histograms have a baseline (rates need two samples).
        wait_for(lambda: len(finite_values(prom.query('up{job="calexpress"} == 1'))) == 3, 60, 0.5,
                 "prometheus scraping the three services")
        t0 = time.time()
        announced = announce_raws(raws, brokers=broker.bootstrap, topic=PREFIX + "raw", repo=REPO)
        send_events(broker.bootstrap, PREFIX + "raw", [b"\xc1 not msgpack"], keys=[b"malformed"])
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "streaming"))
        try:
            from streamhelpers import collect
        finally:
            sys.path.pop(0)
        msgs = collect(broker.bootstrap, PREFIX + "calexp", n=len(raws), timeout=900, idle=2.0)
        calexps = [decode_event(m.value) for m in msgs]
        wall = time.time() - t0

        def scraped_all() -> bool:
            res = prom.query('sum(calexpress_events_total{stage="calibrate",outcome="processed"})')
            return bool(res) and float(res[0]["value"][1]) >= len(raws)

        wait_for(scraped_all, 30, 0.5, "prometheus scraped the processed count")
        time.sleep(3)  # a few more scrapes and rule evaluations
        yield {"prom": prom, "announced": announced, "calexps": calexps, "wall": wall, "tmp": tmp}
    finally:
        if prom is not None:
            prom.stop()
        for p in procs:
            stop_process(p, 20)
        if broker is not None:
            broker.stop()
        sw.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_services_calibrate_every_ccd(run):
    assert len(run["announced"]) == 3
    visits = sorted(e.data_id["visit"] for e in run["announced"])
    assert sorted(e.data_id["visit"] for e in run["calexps"]) == visits
    for ev in run["calexps"]:
        assert set(QUALITY_KEYS) <= set(ev.quality), ev.quality


def test_every_dashboard_query_returns_data(run):
    prom = run["prom"]
    assert len(dashboard_queries()) >= 20
    assert empty_dashboard_queries(prom) == []
    # And the numbers are the pipeline's: throughput, latency and the last CCD's quality.
    (ccd_rate,) = finite_values(prom.query(
        'sum(rate(calexpress_events_total{stage="calibrate",outcome="processed"}[5m])) * 60'))
    assert ccd_rate > 0
    (p95,) = finite_values(prom.query(
        'histogram_quantile(0.95, sum by (le) (rate(calexpress_end_to_end_latency_seconds_bucket'
        '{stage="calibrate"}[5m])))'))
    assert 0 < p95 <= 600  # within the histogram's range, bounded by the wall time of the run
    dead = prom.query('sum by (stage, error_class) (calexpress_dead_letters_total)')
    assert [(d["metric"]["stage"], float(d["value"][1])) for d in dead] == [("isr", 1.0)]
    hits = prom.query('sum by (stage, cache) (rate(calexpress_cache_requests_total{result="hit"}[5m]))'
                      ' / sum by (stage, cache) (rate(calexpress_cache_requests_total[5m]))')
    assert hits and all(0 <= v <= 1 for v in finite_values(hits))
    rates = ", ".join(f"{h['metric']['stage']}/{h['metric']['cache']} {float(h['value'][1]):.2f}"
                      for h in hits)
    print(f"\n{len(run['calexps'])} CCDs in {run['wall']:.1f} s; CCDs/min {ccd_rate:.2f}; "
          f"e2e p95 {p95:.1f} s; cache hit rates {rates}")
    for key in QUALITY_KEYS:
        (value,) = finite_values(prom.query(f'calexpress_ccd_quality{{quality="{key}"}}'))
        print(f"  {key} = {value:.3f} (events: {[round(ev.quality[key], 3) for ev in run['calexps']]})")
        # The gauge holds the summary of the last CCD calibrated: one of the calexp events' values.
        assert any(abs(value - ev.quality[key]) <= 1e-6 * max(1.0, abs(value)) for ev in run["calexps"]), key


def test_alert_rules_load_and_the_dead_letter_alert_fires(run):
    prom = run["prom"]
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules
    alerts = prom.api("alerts")["alerts"]
    firing = {(a["labels"]["alertname"], a["labels"].get("stage")) for a in alerts if a["state"] == "firing"}
    assert ("CalexpressDeadLetters", "isr") in firing
    # The services are up: no ServiceDown/TargetDown alert is even pending.
    down = ("CalexpressServiceDown", "CalexpressTargetDown")
    assert not [a for a in alerts if a["labels"]["alertname"] in down]
