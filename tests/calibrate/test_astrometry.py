"""Astrometry on simcamA: fitted WCS vs truth WCS (acceptance 1), from the header WCS and a bad prior."""

from __future__ import annotations

import numpy as np
import pytest
from calexpress.calibrate import AstrometryTask, LoadIndexedReferenceObjectsTask
from calexpress.calibrate.wcs_fitter import fit_tan_sip
from calexpress.task import TaskError
from calibrate_truth import (
    FRAMES,
    fake_exposure,
    grid_offsets_mas,
    load_frame,
    perturbed_wcs,
    truth_source_catalog,
)


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("perturb", [None, (60.0, 1.0)], ids=["header", "shift60-rot1"])
def test_wcs_matches_truth(simcam_dir, simcam_refcat_dir, frame, perturb):
    fr = load_frame(simcam_dir, frame)
    cat = truth_source_catalog(fr)
    prior = fr.header_wcs if perturb is None else perturbed_wcs(fr.header_wcs, *perturb)
    exp = fake_exposure(fr, prior)
    task = AstrometryTask(refObjLoader=LoadIndexedReferenceObjectsTask(ref_cat_dir=str(simcam_refcat_dir)))
    res = task.run(cat, exp)
    d = grid_offsets_mas(exp.wcs, fr.truth_wcs)
    rms, mx = float(np.sqrt(np.mean(d**2))), float(d.max())
    assert rms <= 10.0, f"grid rms {rms:.1f} mas"
    assert mx <= 30.0, f"grid max {mx:.1f} mas"
    assert len(res.matches.i_src) >= 30
    assert task.metadata["numMatches"] == len(res.matches.i_src)
    assert cat["calib_astrometry_used"].sum() == len(res.matches.i_src)
    # coord_ra/dec updated for all sources from the fitted WCS
    ra, dec = exp.wcs.all_pix2world(cat["slot_Centroid_x"], cat["slot_Centroid_y"], 0)
    np.testing.assert_allclose(np.degrees(cat["coord_ra"]), ra, atol=1e-9)
    assert exp.wcs.sip is not None and exp.wcs.sip.ap is not None


def test_sip_inverse_round_trip(simcam_dir):
    fr = load_frame(simcam_dir, FRAMES[0])
    gx, gy = np.meshgrid(np.linspace(0, 2047, 30), np.linspace(0, 4095, 30))
    ra, dec = fr.truth_wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    for order in (2, 3, 5):
        w = fit_tan_sip(
            gx.ravel(), gy.ravel(), ra, dec, order, (1023.5, 2047.5), (ra[0], dec[0]), (0, 0, 2048, 4096)
        )
        r2, d2 = w.all_pix2world(gx.ravel(), gy.ravel(), 0)
        # the inverse polynomials (AP/BP, one order higher) alone bring the sky back to the pixels
        fx, fy = w.wcs_world2pix(r2, d2, 0)
        uu, vv = fx - (w.wcs.crpix[0] - 1), fy - (w.wcs.crpix[1] - 1)
        ap, bp = w.sip.ap, w.sip.bp
        du = sum(ap[p, q] * uu**p * vv**q for p in range(ap.shape[0]) for q in range(ap.shape[1]))
        dv = sum(bp[p, q] * uu**p * vv**q for p in range(bp.shape[0]) for q in range(bp.shape[1]))
        px, py = uu + du + w.wcs.crpix[0] - 1, vv + dv + w.wcs.crpix[1] - 1
        assert np.max(np.hypot(px - gx.ravel(), py - gy.ravel())) < 0.01
        if order >= 3:  # truth has a cubic radial term: exact at order 3
            d = grid_offsets_mas(w, fr.truth_wcs)
            assert d.max() < 0.5


def test_no_reference_stars_is_a_clear_error(simcam_dir, simcam_refcat_dir):
    fr = load_frame(simcam_dir, FRAMES[0])
    cat = truth_source_catalog(fr)
    exp = fake_exposure(fr, perturbed_wcs(fr.header_wcs, shift_arcsec=3 * 3600.0 * 20))
    task = AstrometryTask(refObjLoader=LoadIndexedReferenceObjectsTask(ref_cat_dir=str(simcam_refcat_dir)))
    with pytest.raises(TaskError, match="no reference stars") as info:
        task.run(cat, exp)
    assert "\n" not in str(info.value)
