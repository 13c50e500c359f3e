"""SourceDetectionTask on simulated frames with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from calexpress.detection import SourceDetectionConfig, SourceDetectionTask, make_source_catalog
from calexpress.mask import DEFAULT_MASK_PLANES
from calexpress.task import ExposureIdInfo
from meas_simutil import make_exposure, pixel_gaussian, star_field

SIGMA = 1.8
SKY_VAR = 400.0


def _task(**overrides):
    cfg = SourceDetectionConfig()
    cfg.reEstimateBackground = False
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return SourceDetectionTask(cfg)


def _snr_flux(snr, sigma=SIGMA, sky_var=SKY_VAR):
    """Flux of a star with matched-filter S/N ``snr``: F sqrt(sum P^2 / v) = snr."""
    p = pixel_gaussian((41, 41), 20, 20, sigma)
    return snr / math.sqrt((p**2).sum() / sky_var)


def test_noise_level_is_smoothed_image_sigma_and_no_false_detections():
    rng = np.random.default_rng(3)
    shape = (1024, 1024)
    img = rng.normal(0, math.sqrt(SKY_VAR), shape).astype(np.float32)
    exp = make_exposure(img, np.full(shape, SKY_VAR, np.float32), SIGMA)
    res = _task().run(None, exp)
    s = exp.psf.determinant_radius()
    width = (int(s * 7 + 0.5) // 2) * 2 + 1
    x = np.arange(width) - width // 2
    k = np.exp(-0.5 * (x / s) ** 2)
    k /= k.sum()
    expected = math.sqrt(SKY_VAR) * (k**2).sum()  # 2-D sum of squares = (1-D sum)^2
    assert res.noise == pytest.approx(expected, rel=0.03)
    assert res.threshold == pytest.approx(5 * res.noise)
    assert res.numPos <= 2
    edge = 1 << DEFAULT_MASK_PLANES["EDGE"]
    assert (exp.mask[0, :] & edge).all() and (exp.mask[:, width // 2 - 1] & edge).all()
    assert not (exp.mask[width // 2, width // 2 : -width // 2] & edge).any()


@pytest.mark.parametrize("snr, min_completeness, max_completeness", [(10.0, 0.95, 1.0), (5.5, 0.5, 0.9)])
def test_completeness_isolated_stars(snr, min_completeness, max_completeness):
    rng = np.random.default_rng(int(snr * 10))
    shape = (1100, 1100)
    g = np.arange(50, 1050, 50, dtype=float)
    xs, ys = np.meshgrid(g, g)
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    flux = np.full(xs.size, _snr_flux(snr))
    _, noisy, var = star_field(shape, xs, ys, flux, SIGMA, SKY_VAR, rng)
    exp = make_exposure(noisy, var, SIGMA)
    res = _task().run(None, exp)
    cat = res.sources
    d = np.hypot(cat["peak_x"][:, None] - xs[None, :], cat["peak_y"][:, None] - ys[None, :])
    found = (d.min(axis=0) < 2.0).mean()
    assert min_completeness <= found <= max_completeness
    spurious = (d.min(axis=1) >= 2.0).sum()
    assert spurious <= 2


def test_footprints_grown_and_detected_mask():
    rng = np.random.default_rng(5)
    shape = (200, 200)
    _, noisy, var = star_field(shape, [100.3], [80.7], [_snr_flux(50)], SIGMA, SKY_VAR, rng)
    exp = make_exposure(noisy, var, SIGMA)
    task = _task()
    res = task.run(None, exp, expId=ExposureIdInfo(7, 40))
    assert res.numPos == 1
    fp = res.positive
    n_grow = int(2.4 * exp.psf.determinant_radius() + 0.5)
    assert task.metadata["nGrow"] == n_grow
    det = (exp.mask & (1 << DEFAULT_MASK_PLANES["DETECTED"])) != 0
    assert det.sum() == fp.npix[0]
    # the grown footprint reaches n_grow beyond the thresholded one
    orig = _task(returnOriginalFootprints=True).run(None, make_exposure(noisy, var, SIGMA)).positive
    assert fp.bbox(0).width == orig.bbox(0).width + 2 * n_grow
    cat = res.sources
    assert cat["id"][0] == (7 << 24) + 1
    assert (cat["peak_x"][0], cat["peak_y"][0]) == (100, 81)
    assert cat["peak_significance"][0] > 40


def test_negative_polarity_and_include_multiplier():
    rng = np.random.default_rng(9)
    shape = (300, 300)
    _, noisy, var = star_field(
        shape, [80.0, 200.0], [150.0, 150.0], [_snr_flux(30), _snr_flux(8)], SIGMA, SKY_VAR, rng
    )
    noisy -= 2 * pixel_gaussian(shape, 150, 60, SIGMA, _snr_flux(30)).astype(np.float32)
    exp = make_exposure(noisy, var, SIGMA)
    res = _task(thresholdPolarity="both").run(None, exp)
    assert res.numPos == 2 and res.numNeg == 1
    neg = res.negative
    assert (neg.peak_x[0], neg.peak_y[0]) == (150, 60)
    assert (exp.mask & (1 << DEFAULT_MASK_PLANES["DETECTED_NEGATIVE"])).any()
    # includeThresholdMultiplier=2: the S/N 8 star's peak is below 10 sigma -> dropped
    exp2 = make_exposure(noisy, var, SIGMA)
    res2 = _task(includeThresholdMultiplier=2.0).run(None, exp2)
    assert res2.numPos == 1 and res2.positive.peak_x[0] == 80


def test_reestimate_background_removes_offset():
    pytest.importorskip("calexpress.background")
    rng = np.random.default_rng(11)
    shape = (512, 512)
    _, noisy, var = star_field(
        shape, [200.0, 300.0], [200.0, 350.0], [_snr_flux(40)] * 2, SIGMA, SKY_VAR, rng
    )
    # a residual background of 1.5 e- (3 sigma of the smoothed image: below threshold) with a gradient
    yy, xx = np.mgrid[0:512, 0:512]
    offset = 1.0 + 1.0 * xx / 512.0
    exp = make_exposure(noisy + offset.astype(np.float32), var, SIGMA)
    res = SourceDetectionTask().run(None, exp)
    assert res.background is not None
    assert res.numPos == 2
    assert abs(float(np.mean(exp.image[20:220, 290:490]))) < 0.4
    assert abs(float(np.mean(exp.image[290:490, 20:220]))) < 0.4


def test_make_source_catalog_columns():
    img = np.zeros((20, 20), np.float32)
    img[5, 5] = 3
    from calexpress.footprints import FootprintSet

    fs = FootprintSet.from_labels((img > 0).astype(np.int32), img, noise=1.0)
    cat = make_source_catalog(fs, ExposureIdInfo(3, 32))
    assert list(cat["id"]) == [(3 << 32) + 1]
    assert cat["parent"][0] == 0 and np.isnan(cat["coord_ra"][0])
    assert str(cat["coord_ra"].unit) == "rad"
    assert cat.footprints is fs
