"""PhotoCal on simcamA truth-derived catalogs: MAGZERO vs truth zp_e_per_s (acceptance 2)."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.calibrate import Colorterm, ColortermDict, LoadIndexedReferenceObjectsTask, PhotoCalTask
from calexpress.calibrate.photocal import direct_match, get_zero_point
from calexpress.task import TaskError
from calibrate_truth import FRAMES, SIMCAM_COLORTERMS, fake_exposure, load_frame, truth_source_catalog


def _photocal(colorterms: bool) -> PhotoCalTask:
    task = PhotoCalTask()
    if colorterms:
        ctd = ColortermDict()
        ctd.data = {
            f: Colorterm(primary=p, secondary=s, c1=c1) for f, (p, s, c1) in SIMCAM_COLORTERMS.items()
        }
        task.config.colorterms = {"simcam_refcat": ctd}
        task.config.photoCatName = "simcam_refcat"
    return task


def _inputs(simcam_dir, simcam_refcat_dir, frame):
    fr = load_frame(simcam_dir, frame)
    cat = truth_source_catalog(fr, seed=3)
    ra, dec = fr.truth_wcs.all_pix2world(cat["slot_Centroid_x"], cat["slot_Centroid_y"], 0)
    cat["coord_ra"], cat["coord_dec"] = np.radians(ra), np.radians(dec)
    loader = LoadIndexedReferenceObjectsTask(ref_cat_dir=str(simcam_refcat_dir))
    res = loader.loadPixelBox((0, 0, 2048, 4096), fr.truth_wcs, fr.header["FILTER"], fr.header["MJD-AVG"])
    return fr, cat, res


@pytest.mark.parametrize("frame", FRAMES)
def test_magzero_matches_truth(simcam_dir, simcam_refcat_dir, frame):
    fr, cat, res = _inputs(simcam_dir, simcam_refcat_dir, frame)
    matches = direct_match(cat, res.refCat, 0.25)
    out = _photocal(True).run(
        fake_exposure(fr, fr.truth_wcs), cat, matches, res.refCat, fr.header["FILTER"], res.fluxField
    )
    magzero = out.zp - 2.5 * np.log10(fr.header["EXPTIME"])
    truth = fr.truth["photometry"]["zp_e_per_s"]
    assert abs(magzero - truth) < 0.005, f"{frame}: MAGZERO {magzero:.4f} truth {truth:.4f}"
    assert out.ngood >= 50
    c1 = SIMCAM_COLORTERMS[fr.header["FILTER"]][2]
    assert out.colorterm == (0.0, c1, 0.0)
    assert out.used.sum() == out.ngood
    # photoCalib: nJy per electron consistent with the zero point
    assert abs(out.photoCalib.zero_point - out.zp) < 1e-9


def test_colour_term_matters(simcam_dir, simcam_refcat_dir):
    """Without the colour term the g zero point is biased by 0.03 <g-r> (the instrument property)."""
    fr, cat, res = _inputs(simcam_dir, simcam_refcat_dir, FRAMES[0])
    matches = direct_match(cat, res.refCat, 0.25)
    exp = fake_exposure(fr, fr.truth_wcs)
    with_ct = _photocal(True).run(exp, cat, matches, res.refCat, "g", res.fluxField)
    without = _photocal(False).run(exp, cat, matches, res.refCat, "g", res.fluxField)
    ref = res.refCat[matches.i_ref]
    gr = np.nanmedian(-2.5 * np.log10(ref["g_flux"] / ref["r_flux"]))
    assert abs((with_ct.zp - without.zp) - 0.03 * gr) < 0.01
    assert without.colorterm == (0.0, 0.0, 0.0)


def test_zero_point_clipping_rejects_outliers():
    rng = np.random.default_rng(0)
    src = rng.uniform(-15, -8, 300)
    ref = src + 25.0 + rng.normal(0, 0.02, 300)
    ref[:30] += rng.uniform(0.5, 2.0, 30)  # blends, variables
    zp = get_zero_point(src, ref, np.full(300, 0.02))
    assert abs(zp.zp - 25.0) < 0.005
    assert not zp.good[:30].any() and zp.ngood >= 260


def test_too_few_stars_is_a_clear_error(simcam_dir, simcam_refcat_dir):
    fr, cat, res = _inputs(simcam_dir, simcam_refcat_dir, FRAMES[0])
    matches = direct_match(cat[:0], res.refCat, 0.25)
    with pytest.raises(TaskError, match="usable matched stars"):
        _photocal(True).run(fake_exposure(fr, fr.truth_wcs), cat, matches, res.refCat, "g", res.fluxField)
