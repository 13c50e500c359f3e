"""Benchmark detection and measurement on a 2048x4096 frame (prints JSON).

Usage: python bench/bench_measurement.py [--simcam PATH_TO_simcamA] [--nstars 2000]

Without simcamA, a synthetic frame with ``nstars`` Gaussian stars is used.  Times are wall seconds on one
core, after a warm-up run (numba compilation is cached on disk): ``*_cpu_s`` is the median CPU time
(``time.process_time``) and ``*_wall_s`` the median wall time of 3 runs, threads pinned to one.  Detection
and measurement have no budget of their own: they are steps of characterize and calibrate (issues 4
and 5, <= 3 s CPU per simcamA frame each; see bench_characterize.py and bench_calibrate.py).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "measurement"))

from calexpress.catalog_calc import CatalogCalculationTask  # noqa: E402
from calexpress.detection import SourceDetectionConfig, SourceDetectionTask  # noqa: E402
from calexpress.measurement import CHARIMAGE_PLUGINS, SingleFrameMeasurementConfig, SingleFrameMeasurementTask  # noqa: E402
from meas_simutil import load_simcam_frame, make_exposure, star_field  # noqa: E402


def _best(fn, n=3):
    """(median CPU s, median wall s, last result) of ``n`` calls."""
    cpus, walls = [], []
    out = None
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(cpus), statistics.median(walls), out


def _bench_frame(exp) -> dict:
    """Time detection (with and without background re-estimation), measurement and catalog calculation."""
    image0, mask0 = exp.image.copy(), exp.mask.copy()

    def detect(task):
        exp.image[:] = image0
        exp.mask[:] = mask0
        return task.run(None, exp)

    dcfg = SourceDetectionConfig()
    dcfg.reEstimateBackground = False
    det = SourceDetectionTask(dcfg)
    detect(det)
    t_det = _best(lambda: detect(det))
    det_bg = SourceDetectionTask()
    try:
        t_det_bg = _best(lambda: detect(det_bg))
    except Exception as e:  # noqa: BLE001
        t_det_bg = (f"failed: {e}",) * 2
    cat = detect(det).sources
    full = SingleFrameMeasurementTask()
    full.run(cat, exp)
    t_full = _best(lambda: full.run(cat, exp))
    ccfg = SingleFrameMeasurementConfig()
    ccfg.plugins = CHARIMAGE_PLUGINS
    char = SingleFrameMeasurementTask(ccfg)
    t_char = _best(lambda: char.run(cat, exp))
    t_calc = _best(lambda: CatalogCalculationTask().run(cat))
    out = {"shape": list(exp.image.shape), "n_sources": len(cat)}
    for name, tt in (
        ("detection", t_det),
        ("detection_with_background_reestimate", t_det_bg),
        ("measurement_all_plugins", t_full),
        ("measurement_charImage_plugins", t_char),
        ("catalog_calculation", t_calc),
    ):
        out[f"{name}_cpu_s"] = round(tt[0], 4) if isinstance(tt[0], float) else tt[0]
        out[f"{name}_wall_s"] = round(tt[1], 4) if isinstance(tt[1], float) else tt[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--simcam", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/simcam/simcamA"
    )
    ap.add_argument("--nstars", type=int, default=2000)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    result: dict = {}
    frames = {}
    if args.simcam.exists():
        exp, *_ = load_simcam_frame(args.simcam)
        frames["simcamA_0001001_g"] = exp
    rng = np.random.default_rng(1)
    shape = (4096, 2048)
    xs, ys = rng.uniform(20, 2028, args.nstars), rng.uniform(20, 4076, args.nstars)
    _, noisy, var = star_field(shape, xs, ys, 10 ** rng.uniform(2.5, 5.5, args.nstars), 1.7, 600.0, rng)
    frames[f"synthetic_{args.nstars}_stars"] = make_exposure(noisy, var, 1.7)
    for name, exp in frames.items():
        result[name] = _bench_frame(exp)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
