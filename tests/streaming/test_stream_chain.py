"""Streaming framework end to end: real Tansu + SeaweedFS, three services (toy stage work).

Covers issue 6 acceptance points 1 (event flow), 3 (duplicates), 4 (dead letters),
5 (replay into a rerun) and 7 (Prometheus scrape) with the framework; the science
stages are exercised in ``test_stage_services.py``.
"""

from __future__ import annotations

import glob
import io

import msgpack
import pytest
from astropy.io import fits
from calexpress import storage
from calexpress.events import SCHEMA_VERSION, decode_event, encode_event, make_event
from calexpress.streaming.announce import replay_topic, send_events
from calexpress.streaming.service import decode_dead_letter
from streamhelpers import ServiceProcs, collect, list_objects, metric_value, publish_raws, unique_prefix

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chain(tmp_path_factory, broker, seaweed):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    procs = ServiceProcs(tmp_path_factory.mktemp("chain"), broker, seaweed)
    try:
        for stage in ("isr", "characterize", "calibrate"):
            procs.start(stage, prefix=prefix, repo=repo)
        yield {"prefix": prefix, "repo": repo, "procs": procs, "brokers": broker.bootstrap}
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def raw_files(simcam_dir, obs_test_repo):
    files = sorted(glob.glob(str(simcam_dir / "raw" / "*.fits*"))) + sorted(
        glob.glob(str(obs_test_repo / "raw" / "*.fits*")))
    assert len(files) == 6
    return files


@pytest.fixture(scope="module")
def live(chain, raw_files):
    """Publish the 6 raws once; return (raw events, calexp messages)."""
    events = publish_raws(raw_files, chain["brokers"], chain["prefix"] + "raw", chain["repo"])
    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", n=6, timeout=90)
    return events, msgs


def _ccd(ev):
    return (ev.instrument, ev.data_id["visit"], ev.data_id["ccd"])


def test_six_raws_give_six_calexp_events(chain, live):
    events, msgs = live
    assert len(events) == 6
    calexps = [decode_event(m.value) for m in msgs]
    assert sorted(_ccd(e) for e in calexps) == sorted(_ccd(e) for e in events)
    by_trace = {e.trace_id: e for e in events}
    for ev in calexps:
        assert ev.dataset_type == "calexp" and ev.stage == "calibrate"
        assert ev.trace_id in by_trace  # the trace id follows the CCD through the stages
        assert ev.collection == "live" and ev.quality and set(ev.quality) >= {"zero_point", "psf_fwhm_arcsec"}
        for dtype, uri in ev.uris.items():
            assert uri.startswith(ev.repo + "/rerun/live/") and ev.repo.startswith(chain["repo"])
            assert ev.checksums[dtype].startswith("etag:")
            with fits.open(io.BytesIO(storage.read_bytes(uri))) as hdul:
                assert hdul[0].header["STAGE"] == "calibrate"
    # no temporary object left under the output prefix
    live = list_objects(chain["repo"], "/rerun/live/")
    assert len(live) == 6 * (5 + 3)
    assert [p for p in live if ".tmp-" in p] == []


def test_duplicates_reannounced_not_recomputed(chain, live):
    events, _ = live
    procs = chain["procs"].procs
    isr_port = procs[0].metrics_port
    before_dup = metric_value(isr_port, "calexpress_events_total", stage="isr", outcome="duplicate")
    before_proc = metric_value(isr_port, "calexpress_events_total", stage="isr", outcome="processed")
    outputs = list_objects(chain["repo"], "/rerun/live/")
    send_events(chain["brokers"], chain["prefix"] + "raw", events)  # every raw event a second time
    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", n=12, timeout=90)
    assert len(msgs) == 12
    calexps = [decode_event(m.value) for m in msgs]
    # the re-announcements carry the same event ids: consumers can de-duplicate
    assert len({e.event_id for e in calexps}) == 6
    dup = metric_value(isr_port, "calexpress_events_total", stage="isr", outcome="duplicate")
    assert dup - before_dup == 6
    assert metric_value(isr_port, "calexpress_events_total", stage="isr", outcome="processed") == before_proc
    cal_port = procs[2].metrics_port
    assert metric_value(cal_port, "calexpress_events_total", stage="calibrate", outcome="duplicate") >= 6
    assert list_objects(chain["repo"], "/rerun/live/") == outputs  # one set of outputs, none rewritten


def test_bad_messages_go_to_dead_letter_topic(chain, live, tmp_path):
    events, _ = live
    good = events[0]
    repo = chain["repo"]
    # a truncated FITS file
    data = storage.read_bytes(good.uris["raw"])
    trunc_uri = f"{repo}/broken/truncated.fits"
    storage.atomic_write(trunc_uri, data[: len(data) // 3])
    truncated = make_event("raw", {"visit": 9001, "ccd": 0}, {"raw": trunc_uri}, stage="publish",
                           instrument="simcamA")
    missing = make_event("raw", {"visit": 9002, "ccd": 0}, {"raw": f"{repo}/nowhere/missing.fits"},
                         stage="publish", instrument="simcamA")
    future = dict(make_event("raw", {"visit": 9003, "ccd": 0}, {"raw": trunc_uri}, stage="publish").to_dict())
    future["schema_version"] = SCHEMA_VERSION + 1
    bad = [encode_event(truncated), encode_event(missing), b"\xc1\x00garbage", msgpack.packb(future)]
    # after the bad ones, a new good CCD into another collection: consumption must continue
    after = make_event("raw", good.data_id, good.uris, stage="publish", instrument=good.instrument,
                       collection="after-dlq", repo=good.repo)
    send_events(chain["brokers"], chain["prefix"] + "raw", bad + [encode_event(after)],
                keys=[b"k1", b"k2", b"k3", b"k4", after.key])
    dlq = collect(chain["brokers"], chain["prefix"] + "raw.dlq", n=4, timeout=60)
    records = [decode_dead_letter(m.value) for m in dlq]
    assert len(records) == 4
    by_original = {r["original"]: r for r in records}
    assert set(by_original) == set(bad)  # the original bytes are kept
    assert by_original[bad[0]]["error_class"] == "PermanentError"
    assert "bad FITS" in by_original[bad[0]]["error_message"]
    assert by_original[bad[1]]["error_class"] == "FileNotFoundError"
    assert "missing.fits" in by_original[bad[1]]["error_message"]
    assert by_original[bad[2]]["error_class"] == "EventError"
    assert "malformed msgpack" in by_original[bad[2]]["error_message"]
    assert "unknown schema_version" in by_original[bad[3]]["error_message"]
    assert all(r["attempt"] >= 1 and r["stage"] == "isr" for r in records)
    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", n=13, timeout=90)
    assert any(decode_event(m.value).collection == "after-dlq" for m in msgs)
    port = chain["procs"].procs[0].metrics_port
    assert metric_value(port, "calexpress_dead_letters_total", stage="isr") >= 4


def test_replay_into_rerun_leaves_live_untouched(chain, live):
    repo = chain["repo"]
    live_objs = list_objects(repo, "/rerun/live/")
    assert len(live_objs) >= 6 * 5  # 5 data sets + 3 completion records per CCD
    sent = replay_topic(chain["brokers"], chain["prefix"] + "raw", "reproc", from_offset=0, idle=2.0)
    assert len(sent) >= 12  # the 6 raws were announced twice (plus none of the bad or rerun ones)
    assert {e.collection for e in sent} == {"reproc"}

    def reprocessed(msgs):
        return [e for e in map(decode_event, (m.value for m in msgs)) if e.collection == "reproc"]

    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", timeout=120,
                   until=lambda ms: len({e.data_id["visit"] for e in reprocessed(ms)}) == 6)
    reproc = reprocessed(msgs)
    assert len({(e.instrument, e.data_id["visit"]) for e in reproc}) == 6
    for ev in reproc:
        for uri in ev.uris.values():
            assert uri.startswith(ev.repo + "/rerun/reproc/") and storage.exists(uri)
    assert list_objects(repo, "/rerun/live/") == live_objs


def test_prometheus_scrapes_the_services(chain, live, tmp_path):
    import shutil

    from calexpress.streaming.procutil import wait_for
    from calexpress.streaming.prometheus_server import PrometheusServer

    if not shutil.which("prometheus"):
        pytest.skip("prometheus binary not installed")
    procs = chain["procs"].procs
    targets = {"calexpress": [f"127.0.0.1:{p.metrics_port}" for p in procs]}
    with PrometheusServer(tmp_path / "prom", targets, scrape_interval="1s") as prom:
        query = 'sum by (stage) (calexpress_events_total{outcome="processed"})'
        wait_for(lambda: len(prom.query(query)) == 3, 30, 0.5, "three stages scraped")
        result = prom.query(query)
        counts = {r["metric"]["stage"]: float(r["value"][1]) for r in result}
        for p, stage in zip(procs, ("isr", "characterize", "calibrate")):
            assert counts[stage] == metric_value(p.metrics_port, "calexpress_events_total", stage=stage,
                                                 outcome="processed")
            assert counts[stage] >= 6
        assert all(h == "up" for h in prom.targets_health().values())
