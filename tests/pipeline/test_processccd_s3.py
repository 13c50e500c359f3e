"""processCcd.py writing to S3 (SeaweedFS on loopback) equals the local run (issue 2, point 4)."""

from __future__ import annotations

import os
import uuid

import numpy as np
from calexpress import Butler
from cli_support import EXAMPLE, run_script

BUCKET = "calexpress-test"  # created by the seaweedfs fixture (tests/conftest.py)


def test_s3_output_equals_local_output(obs_test_output, seaweedfs):
    out, proc = obs_test_output
    assert proc.returncode == 0, proc.stderr[-2000:]
    s3_out = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/out"
    env = {**os.environ, **seaweedfs.env()}
    s3 = run_script("processCcd.py", str(EXAMPLE), "--output", s3_out, "--id", env=env)
    assert s3.returncode == 0, s3.stderr[-3000:]
    local, remote = Butler(str(out)), Butler(s3_out)
    for visit in (1, 2, 3):
        a, b = local.get("src", visit=visit), remote.get("src", visit=visit)
        assert a.colnames == b.colnames and len(a) == len(b) > 0
        for name in a.colnames:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
        ca, cb = local.get("calexp", visit=visit), remote.get("calexp", visit=visit)
        np.testing.assert_array_equal(ca.image, cb.image)
        np.testing.assert_array_equal(ca.mask, cb.mask)
    assert remote.exists("processCcd_config", {})
