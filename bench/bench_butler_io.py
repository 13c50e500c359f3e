"""Butler put/get of a 4k x 4k calexp and a 5000-row catalog, local folder vs SeaweedFS S3 on loopback.

Prints one JSON object (seconds, best of N).  Run: ``python bench/bench_butler_io.py [N]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from astropy.table import Table
from calexpress.butler import Butler
from calexpress.exposure import Exposure
from calexpress.streaming.seaweedfs import SeaweedFS


def _best(fn, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rng = np.random.default_rng(1)
    exp = Exposure(rng.normal(1000, 30, (4096, 4096)).astype(np.float32),
                   np.zeros((4096, 4096), np.int32), np.full((4096, 4096), 900, np.float32), filter="r")
    cat = Table({"id": np.arange(5000, dtype=np.int64), "coord_ra": rng.uniform(0, 1, 5000),
                 "base_PsfFlux_instFlux": rng.uniform(1, 1e5, 5000)})
    ids = {"visit": 1, "filter": "r", "ccd": 0}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, SeaweedFS(os.path.join(tmp, "sw"), buckets=["bench"]) as sw:
        os.environ.update(sw.env())
        for label, root in (("local", os.path.join(tmp, "repo")), ("s3", "s3://bench/repo")):
            b = Butler(root)
            out[f"{label}_put_calexp_s"] = _best(lambda b=b: b.put(exp, "calexp", ids), n)
            out[f"{label}_get_calexp_s"] = _best(lambda b=b: b.get("calexp", ids), n)
            out[f"{label}_put_src_s"] = _best(lambda b=b: b.put(cat, "src", ids), n)
            out[f"{label}_get_src_s"] = _best(lambda b=b: b.get("src", ids), n)
            out[f"{label}_exists_s"] = _best(lambda b=b: b.exists("calexp", ids), n)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
