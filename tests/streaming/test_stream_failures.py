"""Crashes, rebalances and shutdown with real Tansu + SeaweedFS (issue 6 points 2 and 6)."""

from __future__ import annotations

import glob
import io
import os
import signal
import time
from collections import defaultdict

import pytest
from astropy.io import fits
from calexpress import storage
from calexpress.events import decode_event, make_event
from calexpress.streaming.announce import send_events
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


def test_kill9_characterize_mid_ccd_then_restart(services, broker, raw_files):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    services.start("isr", prefix=prefix, repo=repo)
    slow = {"TOY_SLEEP_CHARACTERIZE": "2.5"}
    char = services.start("characterize", prefix=prefix, repo=repo, env=slow)
    services.start("calibrate", prefix=prefix, repo=repo)
    events = publish_raws(raw_files, broker.bootstrap, prefix + "raw", repo)
    # kill -9 while a CCD is being characterized
    wait_for(lambda: metric_value(char.metrics_port, "calexpress_inflight", stage="characterize") == 1
             and metric_value(char.metrics_port, "calexpress_events_total", stage="characterize",
                              outcome="processed") >= 1, 60, 0.05, "characterize busy")
    os.kill(char.pid, signal.SIGKILL)
    char.wait(10)
    services.start("characterize", prefix=prefix, repo=repo, env=slow, name="characterize-restarted")
    msgs = collect(broker.bootstrap, prefix + "calexp", timeout=120, idle=3.0,
                   until=lambda ms: len({decode_event(m.value).data_id["visit"] for m in ms}) == 6)
    per_ccd = defaultdict(list)
    for m in msgs:
        ev = decode_event(m.value)
        per_ccd[(ev.instrument, ev.data_id["visit"])].append(ev)
    assert sorted(per_ccd) == sorted((e.instrument, e.data_id["visit"]) for e in events)
    assert all(len(v) == 1 for v in per_ccd.values()), {k: len(v) for k, v in per_ccd.items()}
    for evs in per_ccd.values():
        for uri in evs[0].uris.values():
            assert storage.exists(uri)
    objs = [o for o in list_objects(repo, "/rerun/live/") if not os.path.basename(o).startswith(".tmp-")]
    # complete outputs: 5 data sets and 3 completion records per CCD, every final object whole
    assert len(objs) == 6 * 8
    for uri in objs:
        data = storage.read_bytes(uri)
        if uri.endswith(".fits"):
            with fits.open(io.BytesIO(data)) as hdul:
                assert hdul[0].data.shape == (256, 256)
        else:
            assert decode_event(data).data_id


def test_two_isr_processes_share_partitions_and_take_over(services, broker, raw_files):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    slow = {"TOY_SLEEP_ISR": "1.0"}
    a = services.start("isr", prefix=prefix, repo=repo, env=slow, name="isr-a")
    b = services.start("isr", prefix=prefix, repo=repo, env=slow, name="isr-b")
    time.sleep(4)  # let the second member's join settle (Tansu holds JoinGroup ~session/2)
    raws = publish_raws(raw_files, broker.bootstrap, prefix + "raw", repo)
    more = [make_event("raw", e.data_id, e.uris, stage="publish", instrument=e.instrument, repo=e.repo,
                       collection=f"extra{i}") for i in range(3) for e in raws]
    send_events(broker.bootstrap, prefix + "raw", more)
    expected = {(e.collection or "live", e.instrument, e.data_id["visit"]) for e in raws + more}
    ids = {p.pid: f"{p.pid}" for p in (a, b)}

    def by_producer(ms):
        return {pid: [m for m in ms if _producer(m).endswith(":" + tag)] for pid, tag in ids.items()}

    # both members work (the partitions are shared) before one is killed
    first = collect(broker.bootstrap, prefix + "postisr", timeout=60, idle=0,
                    until=lambda ms: all(by_producer(ms).values()))
    assert all(by_producer(first).values()), "both isr processes should receive partitions"
    victim, survivor = a, b
    victim_parts = {m.partition for m in by_producer(first)[victim.pid]}
    os.kill(victim.pid, signal.SIGKILL)
    t_kill = time.time()
    victim.wait(10)

    def done(ms):
        got = {(decode_event(m.value).collection, decode_event(m.value).instrument,
                decode_event(m.value).data_id["visit"]) for m in ms}
        return got >= expected

    msgs = collect(broker.bootstrap, prefix + "postisr", timeout=120, idle=1.0, until=done)
    got = {(decode_event(m.value).collection, decode_event(m.value).instrument,
            decode_event(m.value).data_id["visit"]) for m in msgs}
    assert got >= expected, f"lost CCDs: {expected - got}"  # no CCD lost
    taken = [m.timestamp / 1000 for m in msgs if m.partition in victim_parts
             and _producer(m).endswith(f":{survivor.pid}") and m.timestamp / 1000 > t_kill]
    assert taken, "the survivor never processed the killed member's partitions"
    takeover = min(taken) - t_kill
    print(f"takeover after kill -9: {takeover:.1f} s")
    assert takeover <= 15.0


def test_sigterm_finishes_current_ccd_and_commits_it(services, broker, raw_files):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    slow = {"TOY_SLEEP_ISR": "2.0"}
    isr = services.start("isr", prefix=prefix, repo=repo, env=slow, name="isr-term")
    publish_raws(raw_files[:3], broker.bootstrap, prefix + "raw", repo)
    wait_for(lambda: metric_value(isr.metrics_port, "calexpress_inflight", stage="isr") == 1, 60, 0.05,
             "isr busy")
    os.kill(isr.pid, signal.SIGTERM)
    assert isr.wait(20) == 0
    finished = collect(broker.bootstrap, prefix + "postisr", timeout=5, idle=0.5, n=1)
    assert 1 <= len(finished) < 3  # the CCD in progress was finished and announced, then the service left
    again = services.start("isr", prefix=prefix, repo=repo, name="isr-again")
    msgs = collect(broker.bootstrap, prefix + "postisr", n=3, timeout=60, idle=1.0)
    assert len(msgs) == 3  # nothing lost, nothing announced twice: the finished CCDs were committed
    assert metric_value(again.metrics_port, "calexpress_events_total", stage="isr", outcome="duplicate") == 0


def test_sigterm_abandons_a_ccd_that_outlives_the_grace_period(services, broker, raw_files):
    prefix = unique_prefix()
    repo = f"s3://calexpress/{prefix.rstrip('.')}"
    isr = services.start("isr", prefix=prefix, repo=repo, env={"TOY_SLEEP_ISR": "60"}, name="isr-slow",
                         extra=["--shutdown-grace", "1"])
    publish_raws(raw_files[:1], broker.bootstrap, prefix + "raw", repo)
    wait_for(lambda: metric_value(isr.metrics_port, "calexpress_inflight", stage="isr") == 1, 60, 0.05,
             "isr busy")
    t0 = time.monotonic()
    os.kill(isr.pid, signal.SIGTERM)
    assert isr.wait(15) == 0
    assert time.monotonic() - t0 < 10  # left after the grace period, not after the 60 s CCD
    assert collect(broker.bootstrap, prefix + "postisr", timeout=3, idle=0.5) == []
    # not committed: the next member gets the CCD again and finishes it
    services.start("isr", prefix=prefix, repo=repo, name="isr-next")
    assert len(collect(broker.bootstrap, prefix + "postisr", n=1, timeout=60, idle=0.5)) == 1
