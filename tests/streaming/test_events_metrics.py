"""Event schema (strict decoding, keys) and the metrics registry / HTTP endpoint."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from calexpress import metrics
from calexpress.events import (
    QUALITY_KEYS,
    SCHEMA_VERSION,
    EventError,
    decode_event,
    deterministic_event_id,
    encode_event,
    event_key,
    make_event,
)

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _event(**kw):
    return make_event("calexp", {"visit": 1002, "ccd": 0, "filter": "r"}, {"calexp": "s3://b/c.fits"},
                      stage="calibrate", checksums={"calexp": "etag:abc"}, config_hash="0123456789abcdef",
                      observation_time=1.7e9, instrument="simcamA", quality=dict.fromkeys(QUALITY_KEYS, 1.5),
                      **kw)


def test_round_trip_keeps_every_field():
    ev = _event()
    back = decode_event(encode_event(ev))
    assert back == ev
    assert back.schema_version == SCHEMA_VERSION and back.attempt == 1 and len(back.trace_id) == 32


def test_child_event_inherits_trace_and_times():
    raw = make_event("raw", {"visit": 1, "ccd": 0}, {"raw": "s3://b/r.fits"}, stage="publish",
                     observation_time=123.0, instrument="obs_test", collection="reproc", repo="s3://b/repo")
    child = make_event("postISRCCD", raw.data_id, {"postISRCCD": "s3://b/p.fits"}, stage="isr", parent=raw)
    assert (child.trace_id, child.announce_time, child.observation_time) == (
        raw.trace_id, raw.announce_time, 123.0)
    assert (child.collection, child.repo, child.instrument, child.parent_event_id) == (
        "reproc", "s3://b/repo", "obs_test", raw.event_id)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "unknown schema_version 2"),
    (lambda d: d.pop("schema_version"), "unknown schema_version None"),
    (lambda d: d.pop("data_id"), "missing event field(s): data_id"),
    (lambda d: d.update(surprise=1), "unknown event field(s): surprise"),
    (lambda d: d.update(attempt="1"), "'attempt' has type str"),
    (lambda d: d.update(attempt=0), "'attempt' must be >= 1"),
    (lambda d: d.update(data_id={"visit": 1.5}), "data_id entry 'visit'"),
    (lambda d: d.update(uris={"calexp": 3}), "uris entry 'calexp'"),
    (lambda d: d.update(quality={"zero_point": "x"}), "quality entry 'zero_point'"),
    (lambda d: d.update(event_id=""), "'event_id' is empty"),
])
def test_strict_decoding_rejects_with_a_reason(mutate, reason):
    d = _event().to_dict()
    mutate(d)
    with pytest.raises(EventError, match=re.escape(reason)):
        decode_event(msgpack.packb(d))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty message"), (b"\xc1", "malformed msgpack"), (msgpack.packb([1, 2]), "not a map"),
    (b"\x81\xa1", "malformed msgpack")])
def test_malformed_messages_are_rejected(data, reason):
    with pytest.raises(EventError, match=reason):
        decode_event(data)


def test_keys_keep_a_ccd_on_one_partition():
    a = event_key({"visit": 3, "ccd": 1, "filter": "g"}, "simcamA")
    assert a == event_key({"ccd": 1, "visit": 3}, "simcamA") == b"simcamA/ccd=1/visit=3"
    assert a != event_key({"visit": 3, "ccd": 2}, "simcamA")
    ev = _event()
    assert ev.key == event_key(ev.data_id, "simcamA")
    ids = {deterministic_event_id(c, "calexp", ev.data_id, "h") for c in ("live", "live", "reproc")}
    assert len(ids) == 2


def test_metric_names_match_architecture():
    text = ARCHITECTURE.read_text()
    section = text[text.index("## Streaming"):]
    promised = set(re.findall(r"`(calexpress_[a-z_]+)", section))
    assert promised == set(metrics.METRIC_NAMES)
    exposed = set()
    for fam in metrics.REGISTRY.collect():
        exposed.add(fam.name + ("_total" if fam.type == "counter" else ""))
    assert exposed == promised
    labels = {
        metrics.EVENTS: ("stage", "outcome"),
        metrics.CONSUMER_LAG: ("stage", "topic", "partition"),
        metrics.CACHE_REQUESTS: ("stage", "cache", "result"),
        metrics.DEAD_LETTERS: ("stage", "error_class"),
        metrics.CCD_QUALITY: ("quality",),
        metrics.STAGE_DURATION: ("stage",),
    }
    for metric, want in labels.items():
        assert metric._labelnames == want


def test_metrics_server_endpoints():
    state = {"ok": False}
    srv = metrics.MetricsServer(0, readiness_checks={"broker": lambda: state["ok"],
                                                     "object_store": lambda: True}).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        metrics.EVENTS.labels(stage="unittest", outcome="processed").inc()
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'calexpress_events_total{outcome="processed",stage="unittest"} 1.0' in body
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert err.value.code == 503 and json.loads(err.value.read()) == {"broker": "unreachable",
                                                                          "object_store": "ok"}
        state["ok"] = True
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
    finally:
        srv.stop()
