"""Benchmark detection and measurement on a 2048x4096 frame (prints JSON).

Usage: python bench/bench_measurement.py [--simcam PATH_TO_simcamA] [--nstars 2000]

Without simcamA, a synthetic frame with ``nstars`` Gaussian stars is used.  Times are wall seconds on one
core, after a warm-up run (numba compilation is cached on disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "measurement"))

from calexpress.catalog_calc import CatalogCalculationTask  # noqa: E402
from calexpress.detection import SourceDetectionConfig, SourceDetectionTask  # noqa: E402
from calexpress.measurement import CHARIMAGE_PLUGINS, SingleFrameMeasurementConfig, SingleFrameMeasurementTask  # noqa: E402
from meas_simutil import load_simcam_frame, make_exposure, star_field  # noqa: E402


def _best(fn, n=3):
    best = float("inf")
    out = None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


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
    t_det, _ = _best(lambda: detect(det))
    det_bg = SourceDetectionTask()
    try:
        t_det_bg = round(_best(lambda: detect(det_bg))[0], 4)
    except Exception as e:  # noqa: BLE001
        t_det_bg = f"failed: {e}"
    cat = detect(det).sources
    full = SingleFrameMeasurementTask()
    full.run(cat, exp)
    t_full, _ = _best(lambda: full.run(cat, exp))
    ccfg = SingleFrameMeasurementConfig()
    ccfg.plugins = CHARIMAGE_PLUGINS
    char = SingleFrameMeasurementTask(ccfg)
    t_char, _ = _best(lambda: char.run(cat, exp))
    t_calc, _ = _best(lambda: CatalogCalculationTask().run(cat))
    return {
        "shape": list(exp.image.shape),
        "n_sources": len(cat),
        "detection_s": round(t_det, 4),
        "detection_with_background_reestimate_s": t_det_bg,
        "measurement_all_plugins_s": round(t_full, 4),
        "measurement_charImage_plugins_s": round(t_char, 4),
        "catalog_calculation_s": round(t_calc, 4),
    }


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
