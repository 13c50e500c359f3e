"""Benchmark of the streaming services (issue 6, point 8); prints one JSON object.

1. Stream overhead: p50 time from a ``raw`` event to its ``calexp`` event, one CCD
   at a time through the three services (Tansu + SeaweedFS on loopback), against
   the p50 of in-process ``ProcessCcdTask.runDataRef`` on the same simcamA frames
   (local repository).  Target: overhead <= 15 %.  Also reported: the same in-process run on the
   repository the stream uses (``stream_overhead_vs_inprocess_same_repo``), and the CPU of the store
   (SeaweedFS) and broker (Tansu) per CCD, which share the two cores.
2. Parallel efficiency: a backlog of ``--backlog`` CCDs (the simcamA frames
   announced into several collections) with all services running:
   sum of single-core processing times (in-process p50 x CCDs, one BLAS thread) / (wall x cores).
   Target >= 85 %.

Usage: ``python bench/bench_stream.py [--backlog 20] [--calibrate-replicas 1] [--store s3|local]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "streaming"))
SHARED = Path(os.environ.get("CALEXPRESS_SHARED", HERE.parent.parent / "shared"))
SIMCAM = SHARED / "data" / "simcam" / "simcamA"


def _stage_repo(repo: str, raws: list[str], camera: str = "simcamA", mode: str = "copy") -> None:
    from calexpress import storage
    from calexpress.ingest import ingest_calibs, ingest_raws

    assert not ingest_raws(repo, camera, raws, mode=mode).failed
    calibs = [c for c in sorted(glob.glob(str(SIMCAM / "calib" / "*"))) if not c.endswith(".ecsv")]
    assert not ingest_calibs(repo, calibs, mode=mode).failed
    for name in ("simcam_refcat", "cal_ref_cat"):
        for path in sorted(glob.glob(str(SIMCAM / "refcat" / "simcam_refcat" / "*"))):
            storage.put_local_file(path, storage.join(repo, "ref_cats", name, os.path.basename(path)))


def proc_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (from ``/proc/<pid>/stat``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def in_process_times(raws: list[str], tmp: Path | str, repeat: int, cpu: list[float] | None = None,
                     repo: str | None = None) -> list[float]:
    """Seconds per CCD of ProcessCcdTask.runDataRef (single process).

    On a local repository staged under ``tmp``, or on the already staged repository ``repo``
    (e.g. on S3) with the outputs in ``<repo>/rerun/inproc<pass>``.  ``cpu`` receives the CPU
    seconds (user + system, this process) of each CCD.
    """
    from calexpress import storage
    from calexpress.butler import Butler
    from calexpress.pipeline.cmdline import apply_camera_overrides
    from calexpress.pipeline.processCcd import ProcessCcdConfig, ProcessCcdTask

    if repo is None:
        repo = str(Path(tmp) / "local-repo")
        _stage_repo(repo, raws, mode="link")
        out_root = str(Path(tmp) / "local-out{}")
    else:
        out_root = storage.join(repo, "rerun", "inproc{}")
    times = []
    for r in range(repeat):
        out = Butler.for_output(out_root.format(r), repo, calib_cache_size=16)
        config = ProcessCcdConfig()
        apply_camera_overrides(config, out.camera)
        task = ProcessCcdTask(butler=out, config=config)
        for did in out.query_data_ids("raw"):
            t0, c0 = time.perf_counter(), time.process_time()
            task.runDataRef(out.dataRef("raw", **did))
            times.append(time.perf_counter() - t0)
            if cpu is not None:
                cpu.append(time.process_time() - c0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backlog", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2, help="sequential passes for the latency p50")
    ap.add_argument("--calibrate-replicas", type=int, default=1)
    ap.add_argument("--store", choices=["s3", "local"], default="s3",
                    help="repository of the stream: S3 (SeaweedFS, the design) or a local folder (what a "
                         "shared volume would give; the in-process runs are then both local)")
    args = ap.parse_args()

    from calexpress.events import decode_event, make_event
    from calexpress.streaming.announce import announce_raws, send_events
    from calexpress.streaming.procutil import free_port, stop_process, wait_for
    from calexpress.streaming.seaweedfs import SeaweedFS
    from calexpress.streaming.service import limit_threads
    from calexpress.streaming.stack import start_service_process
    from calexpress.streaming.tansu import TansuBroker, create_topics
    from streamhelpers import collect, unique_prefix

    raws = sorted(glob.glob(str(SIMCAM / "raw" / "*.fits*")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    # single-core processing times: one BLAS thread, as in each service (same wall time as the
    # default thread pool here, without the idle threads' spinning)
    limit_threads(1)
    result: dict = {"frames": len(raws), "camera": "simcamA", "cores": os.cpu_count()}
    inproc_cpu: list[float] = []
    inproc = in_process_times(raws, tmp, args.repeat, inproc_cpu)
    result["inprocess_p50_s"] = round(statistics.median(inproc), 3)
    result["inprocess_cpu_p50_s"] = round(statistics.median(inproc_cpu), 3)

    sw = SeaweedFS(tmp / "seaweedfs", buckets=["calexpress"]).start()
    os.environ.update(sw.env())
    broker = TansuBroker(tmp).start()
    procs = []
    try:
        prefix = unique_prefix()
        topics = [prefix + t for t in ("raw", "postisr", "characterized", "calexp")]
        create_topics(broker.bootstrap, topics + [t + ".dlq" for t in topics[:3]], 3)
        if args.store == "s3":
            repo = f"s3://calexpress/{prefix.rstrip('.')}"
            _stage_repo(repo, raws)
        else:
            repo = str(tmp / "stream-repo")
            _stage_repo(repo, raws, mode="link")
        result["store"] = args.store
        # the same in-process run on the stream's repository: raws read from and outputs written to the
        # store the stream uses, so the difference is the streaming itself (hops, intermediates)
        infra = [sw.process.pid, broker.proc.pid]
        repo_cpu: list[float] = []
        cpu0 = proc_cpu_seconds(infra[:1])
        inproc_repo = in_process_times(raws, tmp, args.repeat, repo_cpu, repo=repo)
        result["inprocess_same_repo_p50_s"] = round(statistics.median(inproc_repo), 3)
        store_cpu = proc_cpu_seconds(infra[:1]) - cpu0
        result["inprocess_same_repo_store_cpu_per_ccd_s"] = round(store_cpu / len(repo_cpu), 3)
        stages = ["isr", "characterize"] + ["calibrate"] * args.calibrate_replicas
        for i, stage in enumerate(stages):
            port = free_port()
            procs.append(start_service_process(stage, brokers=broker.bootstrap, repo=repo, s3_env=sw.env(),
                                               metrics_port=port, log_path=tmp / f"{stage}{i}.log",
                                               extra_args=["--topic-prefix", prefix]))
            wait_for(lambda p=port: __import__("urllib.request").request.urlopen(
                f"http://127.0.0.1:{p}/readyz", timeout=1).status == 200, 120, 0.3, f"{stage} ready")
        time.sleep(4)  # group joins settle
        raw_events = announce_raws(raws, brokers=broker.bootstrap, topic=prefix + "raw", repo=repo,
                                   collection="warmup")
        collect(broker.bootstrap, prefix + "calexp", n=len(raws), timeout=600, idle=0.5)
        # 1. latency, one CCD at a time
        lat = []
        seen = len(raws)
        pids = [p.pid for p in procs]
        cpu0 = proc_cpu_seconds(pids)
        store0, broker0 = proc_cpu_seconds(infra[:1]), proc_cpu_seconds(infra[1:])
        for r in range(args.repeat):
            for ev in raw_events:
                e = make_event("raw", ev.data_id, ev.uris, stage="publish", checksums=ev.checksums, repo=repo,
                               instrument=ev.instrument, collection=f"lat{r}")
                t0 = time.time()
                send_events(broker.bootstrap, prefix + "raw", [e])
                seen += 1
                msgs = collect(broker.bootstrap, prefix + "calexp", n=seen, timeout=600, idle=0)
                done = [m for m in msgs if decode_event(m.value).trace_id == e.trace_id]
                lat.append(done[0].timestamp / 1000 - t0)
        lat_cpu = (proc_cpu_seconds(pids) - cpu0) / len(lat)
        result["stream_store_cpu_per_ccd_s"] = round((proc_cpu_seconds(infra[:1]) - store0) / len(lat), 3)
        result["stream_broker_cpu_per_ccd_s"] = round((proc_cpu_seconds(infra[1:]) - broker0) / len(lat), 3)
        # CPU-time based (insensitive to other load on a shared machine): service CPU per CCD, all stages
        result["stream_cpu_per_ccd_s"] = round(lat_cpu, 3)
        result["stream_cpu_overhead"] = round(lat_cpu / statistics.mean(inproc_cpu) - 1, 3)
        result["stream_p50_s"] = round(statistics.median(lat), 3)
        result["stream_overhead"] = round(result["stream_p50_s"] / result["inprocess_p50_s"] - 1, 3)
        result["stream_overhead_vs_inprocess_same_repo"] = round(
            result["stream_p50_s"] / result["inprocess_same_repo_p50_s"] - 1, 3)
        # 2. backlog
        backlog = []
        for i in range(args.backlog):
            ev = raw_events[i % len(raws)]
            backlog.append(make_event("raw", ev.data_id, ev.uris, stage="publish", checksums=ev.checksums,
                                      repo=repo, instrument=ev.instrument, collection=f"bl{i // len(raws)}"))
        t0 = time.time()
        cpu0 = proc_cpu_seconds(pids)
        infra0 = proc_cpu_seconds(infra)
        send_events(broker.bootstrap, prefix + "raw", backlog)
        msgs = collect(broker.bootstrap, prefix + "calexp", n=seen + len(backlog), timeout=1800, idle=0)
        last = max(m.timestamp / 1000 for m in msgs if decode_event(m.value).collection.startswith("bl"))
        wall = last - t0
        backlog_cpu = proc_cpu_seconds(pids) - cpu0
        infra_cpu = proc_cpu_seconds(infra) - infra0
        cores = min(2, os.cpu_count() or 2)
        # CPU-time based: in-process CPU of the CCDs / CPU the services spent on them (1 = no overhead)
        ideal_cpu = len(backlog) * statistics.mean(inproc_cpu)
        result.update(backlog_service_cpu_s=round(backlog_cpu, 2),
                      backlog_cpu_efficiency=round(ideal_cpu / backlog_cpu, 3),
                      backlog_core_utilisation=round(backlog_cpu / (wall * cores), 3),
                      backlog_store_and_broker_cpu_s=round(infra_cpu, 2),
                      # services + SeaweedFS + Tansu: near 1 means the cores are saturated
                      backlog_core_utilisation_all=round((backlog_cpu + infra_cpu) / (wall * cores), 3))
        result.update(backlog_ccds=len(backlog), backlog_wall_s=round(wall, 2),
                      parallel_efficiency=round(len(backlog) * statistics.median(inproc) / (wall * cores), 3),
                      calibrate_replicas=args.calibrate_replicas,
                      targets={"stream_overhead_max": 0.15, "parallel_efficiency_min": 0.85})
    finally:
        for p in procs:
            stop_process(p, 15)
        broker.stop()
        sw.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # several GB of repositories and store data
    print(json.dumps(result))


if __name__ == "__main__":
    main()
