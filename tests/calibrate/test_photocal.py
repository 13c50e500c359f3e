"""PhotoCal on simcamA truth-derived catalogs: MAGZERO vs truth zp_e_per_s (acceptance 2).

The real chain (raw -> ISR -> characterize -> calibrate, with the 12-px -> total correction from the
stacked curve of growth) is checked against the same truth in ``test_raw_to_calexp.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from calexpress.calibrate import Colorterm, ColortermDict, LoadIndexedReferenceObjectsTask, PhotoCalTask
from calexpress.calibrate.photocal import (
    curve_of_growth_correction,
    direct_match,
    get_zero_point,
    kolmogorov_encircled_energy,
)
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


APERTURE_RADII = np.array([3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0])


def _truth_psf_growth(simcam_dir, frame):
    """Encircled energy of the simcamA truth PSF (galsim Kolmogorov of the truth FWHM, pixel-convolved,
    drawn on 401x401 px and integrated with exact circular apertures) at APERTURE_RADII, unit total flux;
    checked against the truth_psf.fits cube inside its stamp."""
    galsim = pytest.importorskip("galsim")
    from photutils.aperture import CircularAperture, aperture_photometry

    tdir = simcam_dir / "truth" / f"{frame}_det0"
    grid = fits.getdata(tdir / "truth_psf.fits", "GRID")
    cube = fits.getdata(tdir / "truth_psf.fits", 0).astype(float)
    fwhm = float(np.median(grid["fwhm_arcsec"]))
    img = galsim.Kolmogorov(fwhm=fwhm).drawImage(nx=401, ny=401, scale=0.2).array.astype(float)
    ee = np.array(
        [aperture_photometry(img, CircularAperture((200, 200), r))["aperture_sum"][0] for r in APERTURE_RADII]
    )
    c = cube.shape[1] // 2
    ee12_cube = np.median(
        [aperture_photometry(k, CircularAperture((c, c), 12.0))["aperture_sum"][0] for k in cube]
    )
    assert abs(2.5 * np.log10(ee[4] / ee12_cube)) < 0.0015  # galsim model = truth cube at 12 px
    return ee


@pytest.mark.parametrize("frame", FRAMES)
def test_curve_of_growth_recovers_truth_aperture_correction(simcam_dir, frame):
    """Stacked rings 12-17-25 px + Kolmogorov tail give the truth 12-px -> total term (within 3 sigma,
    sigma < 2 mmag, with noise; within 0.5 mmag without).

    Stars: the frame's 80 brightest unsaturated truth stars, aperture fluxes = flux_e x EE(r) + Poisson
    and sky noise (truth sky level, read noise 6 e-), errors as measured; 5 % of them get a neighbour's
    light in the outer rings (must be clipped).
    """
    fr = load_frame(simcam_dir, frame)
    ee = _truth_psf_growth(simcam_dir, frame)
    truth_corr = -2.5 * np.log10(ee[4])
    assert 0.015 < truth_corr < 0.036  # the 12-px aperture misses 1.5-3.5 % of the light
    stars = fr.objects[fr.objects["is_star"] & fr.objects["on_detector"] & ~fr.objects["saturated"]]
    flux_e = np.sort(np.asarray(stars["flux_e"], float))[::-1][:80]
    rng = np.random.default_rng(7)
    sky = fr.truth["sky"]["mean_e"] + 36.0
    mean = flux_e[:, None] * ee[None, :]
    var = mean + sky * np.pi * APERTURE_RADII[None, :] ** 2
    # nested apertures: add independent noise ring by ring
    ring_var = np.diff(np.concatenate([np.zeros((len(flux_e), 1)), var], axis=1), axis=1)
    flux = mean + np.cumsum(rng.normal(size=var.shape) * np.sqrt(ring_var), axis=1)
    flux[[2, 11, 23, 40], 5:] += 0.05 * flux[[2, 11, 23, 40], 4:5]  # neighbours
    res = curve_of_growth_correction(flux, np.sqrt(var), APERTURE_RADII, 12.0, 25.0)
    assert res.error < 0.002 and abs(res.correction - truth_corr) < 3 * res.error, (res, truth_corr)
    # noise-free rings: the Kolmogorov extrapolation beyond 25 px itself is right within 0.5 mmag
    exact = curve_of_growth_correction(mean, np.sqrt(var), APERTURE_RADII, 12.0, 25.0)
    assert abs(exact.correction - truth_corr) < 0.0005, (exact.correction, truth_corr)
    assert [r[:2] for r in res.rings] == [(12.0, 17.0), (17.0, 25.0)]
    # measured part = truth growth 12 -> 25 px; fitted Kolmogorov FWHM = truth FWHM within 5 %
    assert abs(exact.measured - 2.5 * np.log10(ee[6] / ee[4])) < 1e-6
    fwhm_px = float(
        np.median(fits.getdata(simcam_dir / "truth" / f"{frame}_det0" / "truth_psf.fits", "GRID")["fwhm_px"])
    )
    assert abs(0.465 / exact.nu0 / fwhm_px - 1) < 0.05


def test_kolmogorov_encircled_energy_is_a_growth_curve():
    ee = kolmogorov_encircled_energy(np.array([1.0, 3.0, 12.0, 25.0, 70.0]), 0.08)
    assert np.all(np.diff(ee) > 0) and 0.998 < ee[-1] < 0.9995 and 0.96 < ee[2] < 0.98
    # the seeing wing: 1 - EE(R) ~ R^(-5/3) far out
    tail = 1 - kolmogorov_encircled_energy(np.array([35.0, 70.0]), 0.08)
    assert abs(np.log(tail[0] / tail[1]) / np.log(2) - 5 / 3) < 0.1


def test_catalog_aperture_to_total_from_source_table():
    """PhotoCalTask's apertureToTotal="catalog" reads base_CircularApertureFlux_* columns (flags honoured)."""
    radii = APERTURE_RADII
    ee = kolmogorov_encircled_energy(radii, 0.09)
    rng = np.random.default_rng(1)
    f = 10 ** rng.uniform(5, 6.3, 60)
    cat = Table()
    for k, r in enumerate(radii):
        name = f"base_CircularApertureFlux_{int(r)}_{int(round(10 * (r - int(r))))}"
        err = np.sqrt(f * ee[k] + 650 * np.pi * r**2)
        cat[f"{name}_instFlux"] = f * ee[k] + rng.normal(size=60) * err * 0.2
        cat[f"{name}_instFluxErr"] = err
        cat[f"{name}_flag"] = np.zeros(60, bool)
    cat["base_CircularApertureFlux_25_0_instFlux"][:5] *= 1.5  # flagged garbage: must be ignored
    cat["base_CircularApertureFlux_25_0_flag"][:5] = True
    task = PhotoCalTask()
    task.config.apertureToTotal = "catalog"
    corr = task._aperture_to_total(cat, np.arange(60), None)
    assert abs(corr + 2.5 * np.log10(ee[4])) < 0.001
    assert task.metadata["apToTotalErr"] < 0.002
    task.config.curveOfGrowthMaxRadius = 12.0  # no larger aperture: no correction, a warning
    assert task._aperture_to_total(cat, np.arange(60), None) == 0.0
