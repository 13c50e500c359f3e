"""The real isr / characterize / calibrate services end to end on obs_test (real Tansu + SeaweedFS).

Issue 6 acceptance points 3 (duplicates), 4 (dead letters), 5 (replay into a rerun)
and 7 (Prometheus scrape), plus the event flow of point 1, with the science stages
on the three obs_test frames (the processCcd.py comparison is in ``test_stage_services.py``).
"""

from __future__ import annotations

import io

import msgpack
import pytest
from astropy.io import fits
from calexpress import storage
from calexpress.events import SCHEMA_VERSION, decode_event, encode_event, make_event
from calexpress.streaming.announce import announce_raws, replay_topic, send_events
from calexpress.streaming.service import decode_dead_letter
from streamhelpers import ServiceProcs, collect, list_objects, metric_value, unique_prefix

pytestmark = pytest.mark.integration

STAGE_OUTPUTS = {"postISRCCD", "icExp", "icSrc", "icExpBackground", "calexp", "src", "calexpBackground"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, broker, seaweed, obs_test_s3):
    prefix = unique_prefix()
    procs = ServiceProcs(tmp_path_factory.mktemp("chain"), broker, seaweed)
    try:
        for stage in ("isr", "characterize", "calibrate"):
            procs.start(stage, prefix=prefix, repo=obs_test_s3)
        yield {"prefix": prefix, "repo": obs_test_s3, "procs": procs, "brokers": broker.bootstrap}
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def live(chain, obs_test_raws):
    """Publish the 3 raws once into collection ``live``; return (raw events, calexp messages)."""
    events = announce_raws(obs_test_raws, brokers=chain["brokers"], topic=chain["prefix"] + "raw",
                           repo=chain["repo"])
    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", n=3, timeout=120)
    return events, msgs


def _ccd(ev):
    return (ev.instrument, ev.data_id["visit"], ev.data_id["ccd"])


def _output_dtypes(uris: list[str]) -> set[str]:
    return {u.split("/rerun/")[1].split("/")[1] for u in uris if "/_events/" not in u}


def test_three_raws_give_three_complete_calexp_events(chain, live):
    events, msgs = live
    assert len(events) == 3
    calexps = [decode_event(m.value) for m in msgs]
    assert sorted(_ccd(e) for e in calexps) == sorted(_ccd(e) for e in events)
    by_trace = {e.trace_id: e for e in events}
    for ev in calexps:
        assert ev.dataset_type == "calexp" and ev.stage == "calibrate"
        assert ev.trace_id in by_trace  # the trace id follows the CCD through the stages
        assert ev.collection == "live" and ev.quality["psf_fwhm_arcsec"] > 0
        assert set(ev.uris) >= {"calexp", "src", "calexpBackground"}
        for dtype, uri in ev.uris.items():
            assert uri.startswith(chain["repo"] + "/rerun/live/")
            assert ev.checksums[dtype].startswith("etag:")
        with fits.open(io.BytesIO(storage.read_bytes(ev.uris["src"]))) as hdul:
            assert hdul[1].header["NAXIS2"] > 0  # a real catalog
    live_objs = list_objects(chain["repo"], "/rerun/live/")
    assert STAGE_OUTPUTS <= _output_dtypes(list(live_objs))
    assert len([p for p in live_objs if "/_events/" in p]) == 3 * 3  # one completion record per stage/CCD
    assert [p for p in live_objs if ".tmp-" in p] == []


def test_duplicates_reannounced_not_recomputed(chain, live):
    events, _ = live
    procs = chain["procs"].procs
    isr_port, cal_port = procs[0].metrics_port, procs[2].metrics_port
    before_dup = metric_value(isr_port, "calexpress_events_total", stage="isr", outcome="duplicate")
    total = "calexpress_events_total"
    before_proc = {p.metrics_port: metric_value(p.metrics_port, total, outcome="processed") for p in procs}
    outputs = list_objects(chain["repo"], "/rerun/live/")
    send_events(chain["brokers"], chain["prefix"] + "raw", events)  # every raw event a second time
    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", n=6, timeout=90)
    calexps = [decode_event(m.value) for m in msgs if decode_event(m.value).collection == "live"]
    assert len(calexps) == 6
    # the re-announcements carry the same event ids: consumers can de-duplicate
    assert len({e.event_id for e in calexps}) == 3
    assert metric_value(isr_port, total, stage="isr", outcome="duplicate") - before_dup == 3
    assert metric_value(cal_port, "calexpress_events_total", stage="calibrate", outcome="duplicate") >= 3
    for p in procs:  # nothing recomputed by any stage
        assert metric_value(p.metrics_port, "calexpress_events_total", outcome="processed") == \
            before_proc[p.metrics_port]
    assert list_objects(chain["repo"], "/rerun/live/") == outputs  # one set of outputs, none rewritten


def test_bad_messages_go_to_dead_letter_topic(chain, live, obs_test_repo):
    events, _ = live
    good = events[0]
    repo = chain["repo"]
    # a truncated FITS raw: a copy of the repository whose raw file holds a third of its bytes
    broken = repo + "-broken"
    name = good.uris["raw"].rpartition("/")[2]
    for path in sorted(obs_test_repo.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(obs_test_repo))
            if rel.endswith(name):
                data = path.read_bytes()
                storage.atomic_write(storage.join(broken, rel), data[: len(data) // 3])
            else:
                storage.put_local_file(str(path), storage.join(broken, rel))
    trunc_uri = storage.join(broken, "raw", name)
    truncated = make_event("raw", good.data_id, {"raw": trunc_uri}, stage="publish",
                           instrument=good.instrument, repo=broken, collection="trunc")
    missing = make_event("raw", good.data_id, {"raw": f"{repo}/nowhere/missing.fits"}, stage="publish",
                         instrument=good.instrument, repo=repo, collection="missing")
    future = dict(make_event("raw", good.data_id, good.uris, stage="publish").to_dict())
    future["schema_version"] = SCHEMA_VERSION + 1
    bad = [encode_event(truncated), encode_event(missing), b"\xc1\x00garbage", msgpack.packb(future)]
    # after the bad ones, the good CCD into another collection: consumption must continue
    after = make_event("raw", good.data_id, good.uris, stage="publish", instrument=good.instrument,
                       collection="after-dlq", repo=good.repo)
    send_events(chain["brokers"], chain["prefix"] + "raw", bad + [encode_event(after)],
                keys=[good.key] * 5)  # one partition: the good event is consumed after the bad ones
    dlq = collect(chain["brokers"], chain["prefix"] + "raw.dlq", n=4, timeout=60)
    records = [decode_dead_letter(m.value) for m in dlq]
    assert len(records) == 4
    by_original = {r["original"]: r for r in records}
    assert set(by_original) == set(bad)  # the original bytes are kept
    assert name in by_original[bad[0]]["error_message"], by_original[bad[0]]
    assert by_original[bad[0]]["error_class"] in ("FitsReadError", "PermanentError")
    assert by_original[bad[1]]["error_class"] == "FileNotFoundError"
    assert "missing.fits" in by_original[bad[1]]["error_message"]
    assert by_original[bad[2]]["error_class"] == "EventError"
    assert "malformed msgpack" in by_original[bad[2]]["error_message"]
    assert "unknown schema_version" in by_original[bad[3]]["error_message"]
    assert all(r["attempt"] >= 1 and r["stage"] == "isr" for r in records)
    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", timeout=120,
                   until=lambda ms: any(decode_event(m.value).collection == "after-dlq" for m in ms))
    assert any(decode_event(m.value).collection == "after-dlq" for m in msgs)
    for root, coll in ((broken, "trunc"), (repo, "missing")):  # no dataset written (the Butler's config only)
        written = list_objects(root, f"/rerun/{coll}/")
        assert [u for u in written if not u.endswith("/repositoryCfg.yaml")] == []
    port = chain["procs"].procs[0].metrics_port
    assert metric_value(port, "calexpress_dead_letters_total", stage="isr") >= 4


def test_replay_into_rerun_leaves_live_untouched(chain, live):
    repo = chain["repo"]
    live_objs = list_objects(repo, "/rerun/live/")
    sent = replay_topic(chain["brokers"], chain["prefix"] + "raw", "reproc", from_offset=0, idle=2.0)
    assert len(sent) >= 3
    assert {e.collection for e in sent} == {"reproc"}

    def reprocessed(msgs):
        return [e for e in map(decode_event, (m.value for m in msgs)) if e.collection == "reproc"]

    msgs = collect(chain["brokers"], chain["prefix"] + "calexp", timeout=180,
                   until=lambda ms: len({e.data_id["visit"] for e in reprocessed(ms)}) == 3)
    reproc = reprocessed(msgs)
    assert len({_ccd(e) for e in reproc}) == 3
    for ev in reproc:
        for uri in ev.uris.values():
            assert uri.startswith(repo + "/rerun/reproc/") and storage.exists(uri)
    reproc_objs = list_objects(repo, "/rerun/reproc/")
    assert STAGE_OUTPUTS <= _output_dtypes(list(reproc_objs))  # a second complete set
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
            assert counts[stage] >= 3
        assert all(h == "up" for h in prom.targets_health().values())
