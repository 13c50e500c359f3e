"""SingleFrameMeasurementTask plugins against simulated truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from calexpress.detection import SourceDetectionConfig, SourceDetectionTask
from calexpress.footprints import HeavyFootprint
from calexpress.geom import Box
from calexpress.mask import DEFAULT_MASK_PLANES
from calexpress.measure_plugins import circle_pixel_overlap
from calexpress.measurement import SingleFrameMeasurementConfig, SingleFrameMeasurementTask, get_slot
from meas_simutil import make_exposure, pixel_gaussian, star_field

SIGMA = 1.7
SKY_VAR = 600.0


def _detect(exp):
    cfg = SourceDetectionConfig()
    cfg.reEstimateBackground = False
    return SourceDetectionTask(cfg).run(None, exp).sources


def _grid_field(rng, fluxes, spacing=60, shape=(1260, 1260), sigma=SIGMA):
    g = np.arange(spacing, shape[0] - spacing + 1, spacing, dtype=float)
    xs, ys = np.meshgrid(g, g)
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    f = np.resize(np.asarray(fluxes, float), xs.size)
    model, noisy, var = star_field(shape, xs, ys, f, sigma, SKY_VAR, rng)
    return xs, ys, f, model, noisy, var


def _match(cat, xs, ys, col="base_SdssCentroid"):
    d = np.hypot(
        np.asarray(cat[f"{col}_x"])[:, None] - xs[None, :], np.asarray(cat[f"{col}_y"])[:, None] - ys
    )
    j = d.argmin(axis=1)
    ok = d[np.arange(len(cat)), j] < 1.5
    return np.flatnonzero(ok), j[ok]


def _crb(x, y, flux, sigma=SIGMA, sky_var=SKY_VAR):
    """Cramér-Rao bound on x for a pixel-integrated Gaussian star with sky + Poisson noise."""
    h = 20
    ix, iy = round(x), round(y)
    m = pixel_gaussian((2 * h + 1, 2 * h + 1), h + x - ix, h + y - iy, sigma, flux)
    dm = (
        pixel_gaussian((2 * h + 1, 2 * h + 1), h + x - ix + 1e-4, h + y - iy, sigma, flux)
        - pixel_gaussian((2 * h + 1, 2 * h + 1), h + x - ix - 1e-4, h + y - iy, sigma, flux)
    ) / 2e-4
    return 1.0 / math.sqrt(np.sum(dm**2 / (sky_var + m)))


def test_centroid_reaches_cramer_rao_and_errors_are_right():
    rng = np.random.default_rng(21)
    # S/N from ~100 to ~1000
    xs, ys, f, _, noisy, var = _grid_field(rng, np.geomspace(2.5e4, 5e5, 7))
    exp = make_exposure(noisy, var, SIGMA)
    cat = _detect(exp)
    SingleFrameMeasurementTask().run(cat, exp)
    i, j = _match(cat, xs, ys)
    assert len(i) >= 0.98 * len(xs)
    dx = np.asarray(cat["base_SdssCentroid_x"])[i] - xs[j]
    dy = np.asarray(cat["base_SdssCentroid_y"])[i] - ys[j]
    crb = np.array([_crb(xs[k], ys[k], f[k]) for k in j])
    lim = np.maximum(1.2 * crb, 0.015)
    # the acceptance criterion: RMS within 1.2 x CRB (or 0.015 px)
    assert math.sqrt(np.mean((dx**2 + dy**2) / 2 / lim**2)) <= 1.0
    # and the estimator is nearly efficient (a fixed PSF-matched weight reaches the bound for
    # background-limited stars and 1.33x it in the source-limited limit)
    assert math.sqrt(np.mean((dx**2 + dy**2) / 2 / crb**2)) < 1.25
    pull = np.r_[
        dx / np.asarray(cat["base_SdssCentroid_xErr"])[i], dy / np.asarray(cat["base_SdssCentroid_yErr"])[i]
    ]
    assert 0.85 < np.std(pull) < 1.15
    assert not np.asarray(cat["base_SdssCentroid_flag"])[i].any()
    assert get_slot(cat, "Centroid_x") is cat["base_SdssCentroid_x"] or np.all(
        get_slot(cat, "Centroid_x") == cat["base_SdssCentroid_x"]
    )


def test_psf_flux_unbiased_with_perfect_psf_and_errors():
    rng = np.random.default_rng(22)
    xs, ys, f, _, noisy, var = _grid_field(rng, np.geomspace(2e4, 2e5, 5))
    exp = make_exposure(noisy, var, SIGMA)
    cat = _detect(exp)
    task = SingleFrameMeasurementTask()
    task.run(cat, exp)
    i, j = _match(cat, xs, ys)
    ratio = np.asarray(cat["base_PsfFlux_instFlux"])[i] / f[j]
    assert abs(np.median(ratio) - 1) < 0.005
    assert abs(np.mean(ratio) - 1) < 0.005
    pull = (np.asarray(cat["base_PsfFlux_instFlux"])[i] - f[j]) / np.asarray(cat["base_PsfFlux_instFluxErr"])[
        i
    ]
    assert 0.8 < np.std(pull) < 1.2
    area = np.asarray(cat["base_PsfFlux_area"])[i]
    assert np.median(area) == pytest.approx(4 * math.pi * (SIGMA**2 + 1 / 12), rel=0.03)
    # the exact (per-source compute_image) path agrees with the grid + Lanczos path
    cfg = SingleFrameMeasurementConfig()
    cfg.plugins = ["base_SdssCentroid", "base_PsfFlux"]
    cfg.psfImageMode = "exact"
    cat2 = cat.copy()
    SingleFrameMeasurementTask(cfg).run(cat2, exp, footprints=cat.footprints)
    r2 = np.asarray(cat2["base_PsfFlux_instFlux"])[i] / np.asarray(cat["base_PsfFlux_instFlux"])[i]
    assert np.max(np.abs(r2 - 1)) < 2e-3


def test_adaptive_moments_recover_gaussian_sigma():
    # elliptical Gaussian sampled at pixel centres: adaptive moments = its covariance
    ny = nx = 81
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    cxx, cyy, cxy = 6.0, 3.5, 1.2
    det = cxx * cyy - cxy**2
    x0, y0 = 40.3, 39.8
    dx, dy = xx - x0, yy - y0
    q = (cyy * dx * dx + cxx * dy * dy - 2 * cxy * dx * dy) / det
    flux = 1e5
    img = flux * np.exp(-0.5 * q) / (2 * math.pi * math.sqrt(det))
    var = np.full(img.shape, 1.0, np.float32)
    exp = make_exposure(img.astype(np.float32), var, 1.5)
    cat = _detect(exp)
    assert len(cat) == 1
    SingleFrameMeasurementTask().run(cat, exp)
    r = cat[0]
    assert r["base_SdssShape_xx"] == pytest.approx(cxx, rel=0.005)
    assert r["base_SdssShape_yy"] == pytest.approx(cyy, rel=0.005)
    assert r["base_SdssShape_xy"] == pytest.approx(cxy, rel=0.005)
    assert r["base_SdssShape_instFlux"] == pytest.approx(flux, rel=0.005)
    assert r["base_GaussianFlux_instFlux"] == pytest.approx(flux, rel=0.005)
    assert (r["base_SdssShape_x"], r["base_SdssShape_y"]) == pytest.approx((x0, y0), abs=1e-3)
    assert not r["base_SdssShape_flag"]
    assert r["base_SdssShape_psf_xx"] == pytest.approx(1.5**2 + 1 / 12, rel=1e-6)


def test_adaptive_moments_noise_pulls():
    rng = np.random.default_rng(23)
    sig = 2.0
    xs, ys, f, _, noisy, var = _grid_field(rng, [3e4], sigma=sig)
    exp = make_exposure(noisy, var, sig)
    cat = _detect(exp)
    SingleFrameMeasurementTask().run(cat, exp)
    i, _ = _match(cat, xs, ys)
    s2 = sig**2 + 1 / 12
    xx = np.asarray(cat["base_SdssShape_xx"])[i]
    assert np.median(xx) == pytest.approx(s2, rel=0.005)
    pull = (xx - s2) / np.asarray(cat["base_SdssShape_xxErr"])[i]
    assert 0.7 < np.std(pull) < 1.3


def test_exact_circle_overlap_and_aperture_fluxes():
    # overlap of a pixel fully inside / outside / a unit-disc quadrant
    assert circle_pixel_overlap(-0.5, 0.5, -0.5, 0.5, 3.0) == pytest.approx(1.0)
    assert circle_pixel_overlap(5.0, 6.0, 5.0, 6.0, 3.0) == 0.0
    assert circle_pixel_overlap(0.0, 2.0, 0.0, 2.0, 1.0) == pytest.approx(math.pi / 4)
    # flat image: aperture sums equal pi r^2 exactly up to maxSincRadius, and about it beyond
    shape = (200, 200)
    exp = make_exposure(np.ones(shape, np.float32), np.full(shape, 2.0, np.float32), 1.5)
    from calexpress.detection import make_source_catalog
    from calexpress.footprints import FootprintSet

    lab = np.zeros(shape, np.int32)
    lab[100, 100] = 1
    fs = FootprintSet.from_labels(lab, np.ones(shape, np.float32))
    cat = make_source_catalog(fs)
    cfg = SingleFrameMeasurementConfig()
    cfg.plugins = ["base_NaiveCentroid", "base_CircularApertureFlux"]
    cfg.doReplaceWithNoise = False
    SingleFrameMeasurementTask(cfg).run(cat, exp)
    for r in (3, 4.5, 6, 9):
        name = f"base_CircularApertureFlux_{int(r)}_{int(round((r % 1) * 10))}"
        assert cat[f"{name}_instFlux"][0] == pytest.approx(math.pi * r * r, rel=1e-9)
    assert cat["base_CircularApertureFlux_50_0_instFlux"][0] == pytest.approx(math.pi * 2500, rel=2e-3)
    assert not cat["base_CircularApertureFlux_70_0_flag_apertureTruncated"][0]
    # Gaussian star: enclosed flux 1 - exp(-r^2 / 2 s^2)
    rng = np.random.default_rng(4)
    x0, y0 = 100 + rng.uniform(-0.5, 0.5), 100 + rng.uniform(-0.5, 0.5)
    img = (pixel_gaussian(shape, x0, y0, 2.0, 1e5) + rng.normal(size=shape)).astype(np.float32)
    exp = make_exposure(img, np.ones(shape, np.float32), 2.0)
    cat = _detect(exp)
    SingleFrameMeasurementTask().run(cat, exp)
    # exact-overlap sums treating a pixel as uniform underestimate by ~2.4 % at r = 1.5 sigma and ~0.9 % at
    # 2.25 sigma (as photutils/sep "exact" do); the slope correction brings that to <= 0.2 %
    for r, tol in ((3, 0.004), (4.5, 0.002), (6, 0.002), (9, 5e-4), (12, 5e-4), (17, 5e-4)):
        name = f"base_CircularApertureFlux_{int(r)}_{int(round((r % 1) * 10))}"
        expect = 1 - math.exp(-r * r / 8.0)
        assert cat[f"{name}_instFlux"][0] / 1e5 / expect == pytest.approx(1.0, abs=tol)


def test_noise_replacement_hides_neighbours():
    rng = np.random.default_rng(31)
    shape = (300, 300)
    xs, ys, f = [130.0, 170.0], [150.0, 150.0], [1e5, 3e5]
    _, noisy, var = star_field(shape, xs, ys, f, SIGMA, 50.0, rng)
    exp = make_exposure(noisy, var, SIGMA)
    cat = _detect(exp)
    assert len(cat) == 2
    SingleFrameMeasurementTask().run(cat, exp, exposureId=5)
    i, j = _match(cat, np.array(xs), np.array(ys))
    a50 = np.asarray(cat["base_CircularApertureFlux_50_0_instFlux"])[i]
    err = np.asarray(cat["base_CircularApertureFlux_50_0_instFluxErr"])[i]
    assert np.all(np.abs(a50 - np.array(f)[j]) < 5 * err)
    cfg = SingleFrameMeasurementConfig()
    cfg.doReplaceWithNoise = False
    cat2 = cat.copy()
    SingleFrameMeasurementTask(cfg).run(cat2, exp, footprints=cat.footprints)
    b50 = np.asarray(cat2["base_CircularApertureFlux_50_0_instFlux"])[i]
    assert np.all(b50 > sum(f) * 0.97)


def test_heavy_footprint_child_is_measured_on_its_own_pixels():
    rng = np.random.default_rng(41)
    shape = (200, 200)
    xs, ys, f = [95.0, 104.0], [100.0, 100.0], [8e4, 4e4]
    model, noisy, var = star_field(shape, xs, ys, f, SIGMA, 50.0, rng)
    exp = make_exposure(noisy, var, SIGMA)
    cat = _detect(exp)
    assert len(cat) == 1 and cat["deblend_nPeaks"][0] == 2  # one blended footprint
    fs = cat.footprints
    box = fs.bbox(0)
    fmask = fs.mask(0)
    # "perfect deblender": each child gets its true share of the pixels
    m1 = pixel_gaussian(shape, xs[0], ys[0], SIGMA, f[0])[box.slices]
    m2 = pixel_gaussian(shape, xs[1], ys[1], SIGMA, f[1])[box.slices]
    tot = m1 + m2
    parent_pix = noisy[box.slices]
    from astropy.table import vstack

    child_rows = []
    heavy = {}
    for k, (mk, x, y) in enumerate(((m1, xs[0], ys[0]), (m2, xs[1], ys[1]))):
        row = cat.copy()
        row["id"] = cat["id"][0] + 1 + k
        row["parent"] = cat["id"][0]
        row["peak_x"], row["peak_y"] = round(x), round(y)
        heavy[int(row["id"][0])] = HeavyFootprint(
            Box(box.x0, box.y0, box.width, box.height),
            fmask,
            np.where(fmask, parent_pix * mk / tot, 0).astype(np.float32),
        )
        child_rows.append(row)
    full = vstack([cat] + child_rows)
    full.heavy_footprints = heavy
    SingleFrameMeasurementTask().run(full, exp, footprints=fs)
    for k in range(2):
        r = full[1 + k]
        assert (r["base_SdssCentroid_x"], r["base_SdssCentroid_y"]) == pytest.approx((xs[k], ys[k]), abs=0.05)
        assert r["base_PsfFlux_instFlux"] == pytest.approx(f[k], rel=0.02)
    # the parent's aperture flux holds both
    assert full[0]["base_CircularApertureFlux_17_0_instFlux"] == pytest.approx(sum(f), rel=0.02)


def test_pixel_flags_and_edge():
    rng = np.random.default_rng(51)
    shape = (200, 200)
    xs, ys, f = [60.0, 140.0, 3.0], [100.0, 100.0, 100.0], [5e4, 5e4, 5e4]
    _, noisy, var = star_field(shape, xs, ys, f, SIGMA, 50.0, rng)
    mask = np.zeros(shape, np.int32)
    mask[100, 60] = 1 << DEFAULT_MASK_PLANES["SAT"]
    mask[105, 140] = 1 << DEFAULT_MASK_PLANES["CR"]
    exp = make_exposure(noisy, var, SIGMA, mask=mask)
    cat = _detect(exp)
    cfg = SingleFrameMeasurementConfig()
    cfg.plugins = list(cfg.plugins) + ["base_FootprintArea"]
    cfg.varianceMaskPlanes = ["BAD", "SAT"]
    SingleFrameMeasurementTask(cfg).run(cat, exp)
    i, j = _match(cat, np.array(xs), np.array(ys))
    by = {int(jj): cat[int(ii)] for ii, jj in zip(i, j)}
    assert by[0]["base_PixelFlags_flag_saturatedCenter"] and by[0]["base_PixelFlags_flag_saturated"]
    assert not by[0]["base_PixelFlags_flag_cr"]
    assert by[1]["base_PixelFlags_flag_cr"] and not by[1]["base_PixelFlags_flag_crCenter"]
    assert not by[1]["base_PixelFlags_flag_edge"]
    assert by[2]["base_PixelFlags_flag_edge"]
    assert by[2]["base_CircularApertureFlux_12_0_flag_apertureTruncated"]
    assert by[1]["base_FootprintArea_value"] == cat.footprints.npix[by[1]["footprint"]]
    assert str(cat["base_SdssCentroid_x"].unit) == "pix" and str(cat["base_PsfFlux_instFlux"].unit) == "ct"
    assert cat.meta["ALIAS_slot_CalibFlux"] == "base_CircularApertureFlux_12_0"
    # local background and variance of a star on a flat sky
    assert by[1]["base_LocalBackground_instFlux"] == pytest.approx(0.0, abs=1.0)
    assert by[1]["base_Variance_value"] == pytest.approx(50.0, rel=0.15)


def test_sky_coord_from_wcs():
    from astropy.wcs import WCS

    rng = np.random.default_rng(61)
    shape = (200, 200)
    _, noisy, var = star_field(shape, [80.0], [120.0], [5e4], SIGMA, 50.0, rng)
    exp = make_exposure(noisy, var, SIGMA)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [101.0, 101.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    exp.wcs = w
    cat = _detect(exp)
    SingleFrameMeasurementTask().run(cat, exp)
    cfg = SingleFrameMeasurementConfig()
    cfg.plugins = list(cfg.plugins) + ["base_LocalWcs", "base_LocalPhotoCalib"]
    SingleFrameMeasurementTask(cfg).run(cat, exp)
    scale = np.deg2rad(0.2 / 3600)
    assert cat["base_LocalWcs_CDMatrix_1_1"][0] == pytest.approx(-scale, rel=1e-4)
    assert cat["base_LocalWcs_CDMatrix_2_2"][0] == pytest.approx(scale, rel=1e-4)
    assert abs(cat["base_LocalWcs_CDMatrix_1_2"][0]) < 1e-6 * scale
    assert cat["base_LocalPhotoCalib_flag"][0] == (getattr(exp, "photo_calib", None) is None)
    ra, dec = w.all_pix2world(cat["base_SdssCentroid_x"], cat["base_SdssCentroid_y"], 0)
    assert np.rad2deg(cat["coord_ra"][0]) == pytest.approx(ra[0], abs=1e-10)
    assert np.rad2deg(cat["coord_dec"][0]) == pytest.approx(dec[0], abs=1e-10)


def test_empty_catalog_gets_columns():
    shape = (100, 100)
    exp = make_exposure(
        np.zeros(shape, np.float32) + np.random.default_rng(1).normal(size=shape).astype(np.float32),
        np.ones(shape, np.float32),
        1.5,
    )
    cat = _detect(exp)
    assert len(cat) == 0
    SingleFrameMeasurementTask().run(cat, exp)
    assert "base_PsfFlux_instFlux" in cat.colnames and len(cat) == 0
