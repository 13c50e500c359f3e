"""`limit_threads` (``calexpress serve --threads``) limits every BLAS pool, also those loaded later."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from calexpress.streaming.service import limit_threads
limit_threads(int(sys.argv[1]))
import numpy, scipy.linalg  # scipy brings its own OpenBLAS, loaded only now
from threadpoolctl import threadpool_info
print(json.dumps([[p["internal_api"], p["filepath"], p["num_threads"]] for p in threadpool_info()]))
"""


def _pools(threads: int) -> list[list]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(threads)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the default pools have one thread too")
def test_threads_limit_every_pool() -> None:
    default = _pools(0)
    limited = _pools(1)
    assert len(limited) >= 2, limited  # numpy's and scipy's OpenBLAS
    assert max(p[2] for p in default) > 1, default  # without the limit a pool has a thread per core
    assert all(p[2] == 1 for p in limited), limited
