"""Deblending (acceptance 4): star pairs 2-3 FWHM apart, flux ratio <= 3, rendered with the truth PSF
into a simcamA exposure, come out as two children with PSF fluxes within 5 %."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from calexpress.calibrate import CalibrateConfig, CalibrateTask
from calexpress.calibrate.deblend import deblend_footprint
from calexpress.task import ExposureIdInfo
from calibrate_truth import load_frame, truth_exposure
from scipy import ndimage
from scipy.spatial import cKDTree

FRAME = "simcamA_0001003_r"


def _inject(exp, psf, x, y, flux, rng):
    ix, iy = int(round(x)), int(round(y))
    h = psf.shape[0] // 2
    sl = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
    stamp = np.clip(ndimage.shift(psf, (y - iy, x - ix), order=3, mode="constant") * flux, 0, None)
    exp.image[sl] += (stamp + rng.normal(0, 1, stamp.shape) * np.sqrt(stamp)).astype(np.float32)
    exp.variance[sl] += stamp.astype(np.float32)


@pytest.fixture(scope="module")
def injected(simcam_dir):
    fr = load_frame(simcam_dir, FRAME)
    exp = truth_exposure(simcam_dir, fr)
    psf = fits.getdata(simcam_dir / "truth" / f"{FRAME}_det0" / "truth_psf.fits", 0)[12].astype(float)
    psf /= psf.sum()
    fwhm = float(np.median(fr.objects["psf_fwhm_arcsec"])) / 0.2
    rng = np.random.default_rng(7)
    objs = fr.objects[fr.objects["on_detector"] & (fr.objects["flux_e"] > 300)]
    tree = cKDTree(np.column_stack([objs["x"], objs["y"]]))
    pairs, singles, placed = [], [], []
    while len(pairs) + len(singles) < 100:
        cx, cy = rng.uniform(60, 1988), rng.uniform(60, 4036)
        if tree.query_ball_point([cx, cy], 40) or any(np.hypot(cx - a, cy - b) < 80 for a, b in placed):
            continue
        placed.append((cx, cy))
        f1 = rng.uniform(2e4, 1e5)
        if len(singles) < 30:
            _inject(exp, psf, cx, cy, f1, rng)
            singles.append((cx, cy, f1))
            continue
        sep, th, f2 = rng.uniform(2, 3) * fwhm, rng.uniform(0, np.pi), f1 / rng.uniform(1, 3)
        pair = [
            (cx + sep / 2 * np.cos(th), cy + sep / 2 * np.sin(th), f1),
            (cx - sep / 2 * np.cos(th), cy - sep / 2 * np.sin(th), f2),
        ]
        for x, y, f in pair:
            _inject(exp, psf, x, y, f, rng)
        pairs.append(pair)
    cfg = CalibrateConfig()
    cfg.doAstrometry = cfg.doPhotoCal = cfg.doApCorr = cfg.doSkySources = False
    src = CalibrateTask(config=cfg).run(exp, ExposureIdInfo(1003)).sourceCat
    return src, pairs, singles


def test_pairs_become_two_children_with_right_fluxes(injected):
    src, pairs, singles = injected
    iso = src[(src["parent"] == 0) & (src["deblend_nChild"] == 0)]
    itree = cKDTree(np.column_stack([iso["base_SdssCentroid_x"], iso["base_SdssCentroid_y"]]))
    d, k = itree.query([(x, y) for x, y, _ in singles])
    assert np.all(d < 1)
    # the PSF model is a Gaussian: calibrate the PSF flux scale on the injected single stars
    scale = np.median(np.asarray(iso["base_PsfFlux_instFlux"])[k] / np.array([f for _, _, f in singles]))
    children = src[src["parent"] != 0]
    ctree = cKDTree(np.column_stack([children["base_SdssCentroid_x"], children["base_SdssCentroid_y"]]))
    ok, errors = 0, []
    for (x1, y1, f1), (x2, y2, f2) in pairs:
        dd, kk = ctree.query([[x1, y1], [x2, y2]])
        if np.all(dd < 2) and kk[0] != kk[1] and children["parent"][kk[0]] == children["parent"][kk[1]]:
            ok += 1
            errors += [
                children["base_PsfFlux_instFlux"][c] / scale / f - 1 for f, c in ((f1, kk[0]), (f2, kk[1]))
            ]
    errors = np.abs(np.array(errors))
    assert ok >= 0.9 * len(pairs), f"{ok}/{len(pairs)} pairs deblended into two children"
    assert np.mean(errors < 0.05) >= 0.9, f"median |error| {np.median(errors):.3f}"
    # parents are flagged and know their children
    parents = src[src["deblend_nChild"] > 0]
    assert np.all(np.isin(children["parent"], parents["id"]))
    assert set(np.unique(children["id"])) <= set(src.heavy_footprints)


def test_template_split_conserves_flux():
    y, x = np.mgrid[0:40, 0:60]

    def gauss(cx, cy, f, s=2.0):
        return f * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)

    img = gauss(22.4, 20.3, 1e4) + gauss(33.6, 20.7, 5e3)
    children = deblend_footprint(img, np.ones(img.shape, bool), np.array([[22, 20], [34, 21]]))
    np.testing.assert_allclose(sum(children), img, rtol=1e-9)
    assert abs(children[0].sum() / 1e4 - 1) < 0.01 and abs(children[1].sum() / 5e3 - 1) < 0.01


def test_peak_cap_flags_parent(simcam_dir):
    from calexpress.calibrate.deblend import SourceDeblendTask
    from calexpress.detection import SourceDetectionTask

    fr = load_frame(simcam_dir, FRAME)
    exp = truth_exposure(simcam_dir, fr)
    src = SourceDetectionTask().run(None, exp).sources
    multi = int(np.sum(src["deblend_nPeaks"] > 2))
    task = SourceDeblendTask()
    task.config.maxNumberOfPeaks = 2
    task.run(exp, src)
    assert int(src["deblend_tooManyPeaks"].sum()) == multi > 0
    assert src["deblend_nChild"].max() <= 2
