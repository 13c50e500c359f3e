"""The whole user workflow on simcamA through the command lines, checked against truth.

``calexpress ingest`` → ``calexpress ingest-calibs`` → reference catalog in ``REPO/ref_cats`` →
``processCcd.py`` → calexp WCS and zero point against the simulator's truth.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from calexpress import Butler
from cli_support import run_script


@pytest.fixture(scope="module")
def simcam_repo(simcam_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("simcam") / "repo"
    raws = sorted(str(p) for p in (simcam_dir / "raw").glob("*.fits.fz"))
    proc = run_script("calexpress", "ingest", str(repo), "--camera", "simcamA", *raws)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calibs = sorted(str(p) for p in (simcam_dir / "calib").iterdir())
    proc = run_script("calexpress", "ingest-calibs", str(repo), *calibs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(simcam_dir / "refcat" / "simcam_refcat", repo / "ref_cats" / "simcam_refcat")
    return repo


def test_processccd_on_simcam_matches_truth(simcam_repo, simcam_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_script("processCcd.py", str(simcam_repo), "--output", str(out), "--id", "visit=1003")
    assert proc.returncode == 0, proc.stderr[-3000:]
    butler = Butler(str(out))
    calexp = butler.get("calexp", visit=1003, ccd=0)
    truth_dir = simcam_dir / "truth" / "simcamA_0001003_r_det0"
    truth = json.loads((truth_dir / "truth.json").read_text())
    # zero point per second in electrons, within 5 mmag of the simulator's
    assert abs(calexp.metadata["MAGZERO"] - truth["photometry"]["zp_e_per_s"]) < 0.005
    assert calexp.metadata["MAGZERO_NOBJ"] >= 50
    # WCS on a 20x20 grid against the true TAN-SIP WCS
    true_wcs = WCS(fits.getheader(truth_dir / "truth_wcs.fits"))
    xs, ys = np.meshgrid(np.linspace(0, 2047, 20), np.linspace(0, 4095, 20))
    ra1, dec1 = calexp.wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
    ra2, dec2 = true_wcs.all_pix2world(xs.ravel(), ys.ravel(), 0)
    sep = np.hypot((ra1 - ra2) * math.cos(math.radians(float(np.mean(dec2)))), dec1 - dec2) * 3.6e6
    assert float(np.sqrt(np.mean(sep**2))) < 10.0 and float(sep.max()) < 30.0
    src = butler.get("src", visit=1003, ccd=0)
    assert {"coord_ra", "coord_dec", "base_PsfFlux_flux", "base_PsfFlux_mag", "calib_astrometry_used",
            "calib_photometry_used"} <= set(src.colnames)
    assert butler.exists("srcMatch", visit=1003, ccd=0)
