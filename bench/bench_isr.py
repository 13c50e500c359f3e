"""Benchmark: IsrTask on one simcamA raw (8.4 Mpix assembled), file reading excluded, one core.

Prints JSON: median wall time over ``--repeat`` runs (after one warm-up run that compiles/loads the numba
kernels), CPU time, and the peak memory added during a run (tracemalloc, numpy allocations) compared with
the raw's float32 size.

    python bench/bench_isr.py [--data ../shared/data/simcam/simcamA] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from calexpress.calibs import CrosstalkCalib, Defects, Linearizer  # noqa: E402
from calexpress.camera import get_camera  # noqa: E402
from calexpress.isr import IsrTask, IsrTaskConfig, apply_camera_overrides  # noqa: E402


def main() -> None:
    here = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here / "shared" / "data" / "simcam" / "simcamA"))
    parser.add_argument("--visit", default="simcamA_0001001_g")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = Path(args.data)
    cam = get_camera("simcamA")
    raw = cam.read_raw(data / "raw" / f"{args.visit}.fits.fz")
    band = args.visit.rsplit("_", 1)[1]
    cal = data / "calib"
    calibs = dict(
        bias=fits.getdata(cal / "bias_det0.fits", "IMAGE"),
        dark=fits.getdata(cal / "dark_det0.fits", "IMAGE"),
        flat=fits.getdata(cal / f"flat_{band}_det0.fits", "IMAGE"),
        defects=Defects.read(cal / "defects_det0.fits"),
        linearizer=Linearizer.read(cal / "linearizer.yaml"),
        crosstalk=CrosstalkCalib.read(cal / "crosstalk.yaml"),
    )
    task = IsrTask(config=apply_camera_overrides(IsrTaskConfig(), cam))
    task.run(raw.clone(), **calibs)  # warm-up: numba kernels load from the cache (or compile)
    walls, cpus = [], []
    for _ in range(args.repeat):
        r = raw.clone()
        t0, c0 = time.perf_counter(), time.process_time()
        task.run(r, **calibs)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    r = raw.clone()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = task.run(r, **calibs)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    raw_bytes = raw.image.size * 4
    out = {
        "benchmark": "isr_simcamA",
        "visit": args.visit,
        "raw_pixels": int(raw.image.size),
        "assembled_pixels": int(result.exposure.image.size),
        "repeat": args.repeat,
        "wall_s_median": round(float(np.median(walls)), 4),
        "wall_s_min": round(float(np.min(walls)), 4),
        "cpu_s_median": round(float(np.median(cpus)), 4),
        "budget_s": 0.5,
        "peak_added_bytes": int(peak),
        "raw_float32_bytes": int(raw_bytes),
        "peak_added_over_raw": round(peak / raw_bytes, 2),
        "budget_peak_over_raw": 8.0,
        # issue 3, acceptance 6: <= 0.5 s on one core (judged on CPU time) and <= 8x the raw's size
        "within_budget": bool(float(np.median(cpus)) <= 0.5 and peak / raw_bytes <= 8.0),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
