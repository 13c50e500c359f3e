"""Benchmark CharacterizeImageTask on one simcamA frame (truth image + noise + cosmic rays).

Prints JSON: total wall time and the time of each step.  Usage::

    python bench/bench_characterize.py [--frame simcamA_0001001_g_det0] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "characterize"))

from calexpress.characterize import CharacterizeImageTask  # noqa: E402
from calexpress.task import ExposureIdInfo  # noqa: E402
from truthframe import load_truth, make_exposure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    default = (
        Path(os.environ.get("CALEXPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
    )
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--frame", default="simcamA_0001001_g_det0")
    ap.add_argument("--repeat", type=int, default=2, help="runs (the first one includes numba compilation)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    truth = load_truth(Path(args.data) / "simcam" / "simcamA", args.frame)
    runs = []
    for _ in range(args.repeat):
        exp = make_exposure(truth)
        task = CharacterizeImageTask()
        t0 = time.perf_counter()
        res = task.run(exp, exposureIdInfo=ExposureIdInfo(int(truth["info"]["expid"]), 41))
        total = time.perf_counter() - t0
        runs.append(
            dict(
                total_s=round(total, 3),
                steps_s={k: round(v, 3) for k, v in res.timings.items()},
                n_sources=len(res.sourceCat),
                n_psf_stars=int(task.metadata["numPsfStars"]),
                n_cosmic_rays=int(task.metadata["numCosmicRays"]),
                psf_fwhm_px=round(float(task.metadata["psfFwhm"]), 3),
            )
        )
    print(
        json.dumps(
            dict(
                frame=args.frame,
                shape=list(exp.shape),
                runs=runs,
                best_total_s=min(r["total_s"] for r in runs),
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
