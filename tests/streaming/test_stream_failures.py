"""Crashes, rebalances and shutdown with real Tansu + SeaweedFS (issue 6 points 2 and 6).

The kill -9 and two-member tests run the real isr / characterize / calibrate services on
the obs_test frames.  The SIGTERM tests need a CCD that takes a known, long time (2 s,
60 s), so they run the framework with the toy stage (``toystage.py``, ``TOY_SLEEP_ISR``).
"""

from __future__ import annotations

import glob
import io
import os
import signal
import time
import uuid
from collections import defaultdict

import pytest
import yaml
from astropy.io import fits
from calexpress import storage
from calexpress.events import decode_event, make_event
from calexpress.streaming.announce import announce_raws, send_events
from calexpress.streaming.procutil import wait_for
from streamhelpers import collect, list_objects, metric_value, publish_raws, unique_prefix

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def raw_files(simcam_dir, obs_test_repo):
    files = sorted(glob.glob(str(simcam_dir / "raw" / "*.fits*"))) + sorted(
        glob.glob(str(obs_test_repo / "raw" / "*.fits*")))
    assert len(files) == 6
    return files


def _producer(msg) -> str:
    return dict(msg.headers).get("producer", b"").decode()


def _assert_complete_objects(prefix: str) -> None:
    """Every object under ``prefix`` is whole: FITS files open with all their data, no temporaries."""
    objs = list_objects(prefix)
    assert objs and [p for p in objs if ".tmp-" in p] == []
    for uri in objs:
        data = storage.read_bytes(uri)
        if ".fits" in uri:
            with fits.open(io.BytesIO(data)) as hdul:
                for hdu in hdul:
                    _ = hdu.data  # raises or comes back short on a truncated object
                assert len(data) % 2880 == 0 or uri.endswith(".gz"), uri
        elif uri.endswith(".msgpack"):
            assert decode_event(data).data_id, uri  # completion record
        else:
            assert uri.endswith("/repositoryCfg.yaml") and yaml.safe_load(data)["_parents"], uri


def test_kill9_characterize_mid_ccd_then_restart(services, broker, obs_test_s3, obs_test_raws):
    prefix = unique_prefix()
    repo = obs_test_s3
    coll = f"kill9-{uuid.uuid4().hex[:6]}"
    services.start("isr", prefix=prefix, repo=repo)
    char = services.start("characterize", prefix=prefix, repo=repo)
    services.start("calibrate", prefix=prefix, repo=repo)
    events = announce_raws(obs_test_raws, brokers=broker.bootstrap, topic=prefix + "raw", repo=repo,
                           collection=coll)
    # kill -9 while a CCD is being characterized (after one has been finished and committed)
    wait_for(lambda: metric_value(char.metrics_port, "calexpress_inflight", stage="characterize") == 1
             and metric_value(char.metrics_port, "calexpress_events_total", stage="characterize",
                              outcome="processed") >= 1, 120, 0.02, "characterize busy")
    os.kill(char.pid, signal.SIGKILL)
    char.wait(10)
    again = services.start("characterize", prefix=prefix, repo=repo, name="characterize-restarted")
    msgs = collect(broker.bootstrap, prefix + "calexp", timeout=180, idle=3.0,
                   until=lambda ms: len({decode_event(m.value).data_id["visit"] for m in ms}) == 3)
    per_ccd = defaultdict(list)
    for m in msgs:
        ev = decode_event(m.value)
        per_ccd[(ev.instrument, ev.data_id["visit"])].append(ev)
    assert sorted(per_ccd) == sorted((e.instrument, e.data_id["visit"]) for e in events)
    assert all(len(v) == 1 for v in per_ccd.values()), {k: len(v) for k, v in per_ccd.items()}
    # the restarted service redid the killed CCD (and nothing it had committed before)
    assert metric_value(again.metrics_port, "calexpress_events_total", stage="characterize",
                        outcome="processed") >= 1
    out = f"{repo}/rerun/{coll}"
    for evs in per_ccd.values():
        assert set(evs[0].uris) >= {"calexp", "src", "calexpBackground"}
        for uri in evs[0].uris.values():
            assert uri.startswith(out + "/") and storage.exists(uri)
    # complete outputs of all three stages, and no partial object under a final key
    assert len([p for p in list_objects(out, "/_events/")]) == 3 * 3
    _assert_complete_objects(out)


def test_two_isr_processes_share_partitions_and_take_over(services, broker, obs_test_s3, obs_test_raws):
    prefix = unique_prefix()
    repo = obs_test_s3
    tag = uuid.uuid4().hex[:6]
    a = services.start("isr", prefix=prefix, repo=repo, name="isr-a")
    b = services.start("isr", prefix=prefix, repo=repo, name="isr-b")
    time.sleep(4)  # let the second member's join settle (Tansu holds JoinGroup ~session/2)
    # the 3 obs_test CCDs land on partitions 0, 1, 2; a backlog of 12 collections of them
    raws = announce_raws(obs_test_raws, brokers=broker.bootstrap, topic=prefix + "raw", repo=repo,
                         collection=f"two{tag}-0")
    more = [make_event("raw", e.data_id, e.uris, stage="publish", instrument=e.instrument, repo=e.repo,
                       collection=f"two{tag}-{i}") for i in range(1, 12) for e in raws]
    send_events(broker.bootstrap, prefix + "raw", more)
    expected = {(e.collection, e.instrument, e.data_id["visit"]) for e in raws + more}
    assert len(expected) == 36
    ids = {p.pid: f"{p.pid}" for p in (a, b)}

    def by_producer(ms):
        return {pid: [m for m in ms if _producer(m).endswith(":" + tag)] for pid, tag in ids.items()}

    # both members work (the partitions are shared) before one is killed
    first = collect(broker.bootstrap, prefix + "postisr", timeout=90, idle=0,
                    until=lambda ms: all(by_producer(ms).values()))
    assert all(by_producer(first).values()), "both isr processes should receive partitions"
    victim, survivor = a, b
    victim_parts = {m.partition for m in by_producer(first)[victim.pid]}
    n_parts = len({m.partition for m in first})
    os.kill(victim.pid, signal.SIGKILL)
    t_kill = time.time()
    victim.wait(10)
    # "takes over" = the group rebalanced and the survivor owns every partition
    wait_for(lambda: metric_value(survivor.metrics_port, "calexpress_assigned_partitions", stage="isr")
             >= n_parts, 30, 0.2, "the survivor never got the killed member's partitions")
    takeover = time.time() - t_kill

    def got_of(ms):
        return {(decode_event(m.value).collection, decode_event(m.value).instrument,
                 decode_event(m.value).data_id["visit"]) for m in ms}

    msgs = collect(broker.bootstrap, prefix + "postisr", timeout=180, idle=1.0,
                   until=lambda ms: got_of(ms) >= expected)
    got = got_of(msgs)
    assert got >= expected, f"lost CCDs: {expected - got}"  # no CCD lost
    for ev in map(decode_event, (m.value for m in msgs)):
        assert storage.exists(ev.uris["postISRCCD"])
    taken = [m.timestamp / 1000 for m in msgs if m.partition in victim_parts
             and _producer(m).endswith(f":{survivor.pid}") and m.timestamp / 1000 > t_kill]
    assert taken, "the survivor never processed the killed member's partitions"
    print(f"takeover after kill -9: {takeover:.1f} s; first output from a taken partition after "
          f"{min(taken) - t_kill:.1f} s")
    assert takeover <= 15.0


def test_sigterm_finishes_current_ccd_and_commits_it(services, broker, raw_files):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    slow = {"TOY_SLEEP_ISR": "2.0"}
    isr = services.start("isr", prefix=prefix, repo=repo, toy=True, env=slow, name="isr-term")
    publish_raws(raw_files[:3], broker.bootstrap, prefix + "raw", repo)
    wait_for(lambda: metric_value(isr.metrics_port, "calexpress_inflight", stage="isr") == 1, 60, 0.05,
             "isr busy")
    os.kill(isr.pid, signal.SIGTERM)
    assert isr.wait(20) == 0
    finished = collect(broker.bootstrap, prefix + "postisr", timeout=5, idle=0.5, n=1)
    assert 1 <= len(finished) < 3  # the CCD in progress was finished and announced, then the service left
    again = services.start("isr", prefix=prefix, repo=repo, toy=True, name="isr-again")
    msgs = collect(broker.bootstrap, prefix + "postisr", n=3, timeout=60, idle=1.0)
    assert len(msgs) == 3  # nothing lost, nothing announced twice: the finished CCDs were committed
    assert metric_value(again.metrics_port, "calexpress_events_total", stage="isr", outcome="duplicate") == 0


def test_sigterm_abandons_a_ccd_that_outlives_the_grace_period(services, broker, raw_files):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    isr = services.start("isr", prefix=prefix, repo=repo, toy=True, env={"TOY_SLEEP_ISR": "60"},
                         name="isr-slow", extra=["--shutdown-grace", "1"])
    publish_raws(raw_files[:1], broker.bootstrap, prefix + "raw", repo)
    wait_for(lambda: metric_value(isr.metrics_port, "calexpress_inflight", stage="isr") == 1, 60, 0.05,
             "isr busy")
    t0 = time.monotonic()
    os.kill(isr.pid, signal.SIGTERM)
    assert isr.wait(15) == 0
    assert time.monotonic() - t0 < 10  # left after the grace period, not after the 60 s CCD
    assert collect(broker.bootstrap, prefix + "postisr", timeout=3, idle=0.5) == []
    # not committed: the next member gets the CCD again and finishes it
    services.start("isr", prefix=prefix, repo=repo, toy=True, name="isr-next")
    assert len(collect(broker.bootstrap, prefix + "postisr", n=1, timeout=60, idle=0.5)) == 1
