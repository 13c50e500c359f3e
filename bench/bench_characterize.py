"""Benchmark CharacterizeImageTask on one simcamA frame (truth image + noise + cosmic rays).

Prints JSON: per-step CPU (``time.process_time``) and wall seconds, median over ``--repeat`` timed runs
after one warm-up run (numba compilation and caches), and ``within_budget`` against issue 4's budget
(characterize <= 3 s per simcamA frame on one core, judged on CPU time).  Threads are pinned to one
(OMP/NUMBA/BLAS) before numpy is imported.  Usage::

    python bench/bench_characterize.py [--frame simcamA_0001001_g_det0] [--repeat 3] [--data ../shared/data]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "characterize"))

from calexpress.characterize import CharacterizeImageTask  # noqa: E402
from calexpress.task import ExposureIdInfo  # noqa: E402
from truthframe import load_truth, make_exposure  # noqa: E402

BUDGET_CPU_S = 3.0  # issue 4, acceptance 7


def _median_dict(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = dicts[0].keys()
    return {k: round(statistics.median(d.get(k, 0.0) for d in dicts), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    default = (
        Path(os.environ.get("CALEXPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
    )
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--frame", default="simcamA_0001001_g_det0")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    truth = load_truth(Path(args.data) / "simcam" / "simcamA", args.frame)
    exp_id = ExposureIdInfo(int(truth["info"]["expid"]), 41)
    CharacterizeImageTask().run(make_exposure(truth), exposureIdInfo=exp_id)  # warm-up (numba)
    runs = []
    for _ in range(args.repeat):
        exp = make_exposure(truth)
        task = CharacterizeImageTask()
        t0, c0 = time.perf_counter(), time.process_time()
        res = task.run(exp, exposureIdInfo=exp_id)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append(
            dict(
                cpu_s=cpu,
                wall_s=wall,
                steps_cpu_s=dict(res.cpu_timings),
                steps_wall_s=dict(res.timings),
                n_sources=len(res.sourceCat),
                n_psf_stars=int(task.metadata["numPsfStars"]),
                n_cosmic_rays=int(task.metadata["numCosmicRays"]),
                psf_fwhm_px=round(float(task.metadata["psfFwhm"]), 4),
            )
        )
    cpu = statistics.median(r["cpu_s"] for r in runs)
    print(
        json.dumps(
            dict(
                benchmark="characterize",
                frame=args.frame,
                shape=list(exp.shape),
                threads=1,
                repeat=args.repeat,
                median_cpu_s=round(cpu, 3),
                median_wall_s=round(statistics.median(r["wall_s"] for r in runs), 3),
                min_cpu_s=round(min(r["cpu_s"] for r in runs), 3),
                steps_cpu_s=_median_dict([r["steps_cpu_s"] for r in runs]),
                steps_wall_s=_median_dict([r["steps_wall_s"] for r in runs]),
                n_sources=runs[-1]["n_sources"],
                n_psf_stars=runs[-1]["n_psf_stars"],
                n_cosmic_rays=runs[-1]["n_cosmic_rays"],
                psf_fwhm_px=runs[-1]["psf_fwhm_px"],
                budget_cpu_s=BUDGET_CPU_S,
                within_budget=bool(cpu <= BUDGET_CPU_S),
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
