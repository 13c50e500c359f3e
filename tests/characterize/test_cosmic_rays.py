"""Cosmic rays (issue 4, acceptance 3), plus unit tests of the finder."""

from __future__ import annotations

import numpy as np
from calexpress.characterize.cosmic_rays import FindCosmicRaysConfig, find_cosmic_rays
from calexpress.mask import DEFAULT_MASK_PLANES
from calexpress.psf import GaussianPsf
from conftest import match_to_truth
from scipy import ndimage


def test_cr_completeness(char_any):
    exp, truth = char_any.exposure, char_any.truth
    cr = truth["planes"]["CR"]
    flagged = (exp.mask & exp.get_plane_bitmask("CR")) != 0
    good = (truth["planes"]["MASK"] & 7) == 0
    strong = (cr >= 5 * np.sqrt(exp.variance)) & good
    assert strong.sum() > 500
    assert (flagged & strong).sum() / strong.sum() >= 0.98
    # flagged pixels without any deposit: a handful at most
    assert (flagged & (cr == 0)).sum() <= 0.01 * flagged.sum()
    # interpolated (CR | INTRP) and the repaired values are close to the CR-free truth
    intrp = (exp.mask & exp.get_plane_bitmask("INTRP")) != 0
    assert np.all(intrp[flagged])


def test_no_star_core_flagged(char_any):
    exp, truth = char_any.exposure, char_any.truth
    obj = truth["objects"]
    flagged = (exp.mask & exp.get_plane_bitmask("CR")) != 0
    near = ndimage.maximum_filter(flagged.astype(np.uint8), size=5) > 0  # CR within 2 px
    noise2 = float(np.median(exp.variance))
    snr = obj["flux_e"] / np.sqrt(obj["flux_e"] + 4 * np.pi * 7.0 * noise2)
    ny, nx = exp.shape
    ix, iy = np.round(obj["x"]).astype(int), np.round(obj["y"]).astype(int)
    sel = (
        obj["is_star"]
        & obj["on_detector"]
        & ~obj["saturated"]
        & (snr > 50)
        & (ix >= 0)
        & (iy >= 0)
        & (ix < nx)
        & (iy < ny)
        & ~obj["cr_within_2px"]
    )
    assert sel.sum() > 20
    assert near[iy[sel], ix[sel]].mean() <= 0.005


def test_no_icsrc_source_is_a_cosmic_ray(char_any):
    """A CR source = no truth object within 3 px but CR deposits within 3 px of the centroid."""
    cat, obj = char_any.catalog, char_any.truth["objects"]
    _, dist = match_to_truth(cat, obj)
    assert len(cat) > 20
    cr = char_any.truth["planes"]["CR"]
    near_cr = ndimage.maximum_filter(cr, size=7)
    ix = np.clip(np.round(np.asarray(cat["base_SdssCentroid_x"])).astype(int), 0, cr.shape[1] - 1)
    iy = np.clip(np.round(np.asarray(cat["base_SdssCentroid_y"])).astype(int), 0, cr.shape[0] - 1)
    is_cr = (dist >= 3.0) & (near_cr[iy, ix] > 0)
    assert not is_cr.any(), cat[is_cr]["base_SdssCentroid_x", "base_SdssCentroid_y"]
    # and nearly every icSrc source is a real object
    assert np.mean(dist < 3.0) >= 0.98


def _scene(seed=3):
    rng = np.random.default_rng(seed)
    ny, nx = 200, 200
    yy, xx = np.mgrid[:ny, :nx]
    sigma = 1.8
    img = np.zeros((ny, nx))
    stars = [(50.3, 60.7, 2e5), (140.5, 150.2, 5e4), (100.0, 30.0, 1e6)]
    for x, y, f in stars:
        img += f / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    var = img + 100.0
    noisy = img + rng.standard_normal(img.shape) * np.sqrt(var)
    cr = np.zeros_like(img)
    cr[20, 20] = 800
    cr[150, 40:47] = 400  # horizontal track
    cr[90:93, 170] = [300, 900, 300]
    return (noisy + cr).astype(np.float32), var.astype(np.float32), cr, stars, sigma


def test_finder_synthetic():
    img, var, cr, stars, sigma = _scene()
    mask = np.zeros(img.shape, np.int32)
    work = img.copy()
    res = find_cosmic_rays(work, var, mask, DEFAULT_MASK_PLANES, GaussianPsf(sigma), FindCosmicRaysConfig())
    flagged = (mask & (1 << DEFAULT_MASK_PLANES["CR"])) != 0
    assert flagged[cr > 250].all()
    for x, y, _ in stars:
        assert not flagged[int(round(y)) - 3 : int(round(y)) + 4, int(round(x)) - 3 : int(round(x)) + 4].any()
    assert res.nCr == 3
    # repaired pixels are back to the noise level
    assert np.abs(work[cr > 0] - (img - cr)[cr > 0]).max() < 6 * np.sqrt(var[cr > 0]).max()


def test_keep_crs_leaves_pixels():
    img, var, cr, _, sigma = _scene()
    mask = np.zeros(img.shape, np.int32)
    work = img.copy()
    find_cosmic_rays(
        work, var, mask, DEFAULT_MASK_PLANES, GaussianPsf(sigma), FindCosmicRaysConfig(), keep_crs=True
    )
    np.testing.assert_array_equal(work, img)
    assert ((mask & (1 << DEFAULT_MASK_PLANES["INTRP"])) == 0).all()


def test_too_many_crs_raises():
    import pytest
    from calexpress.task import TaskError

    img, var, _, _, sigma = _scene()
    cfg = FindCosmicRaysConfig()
    cfg.nCrPixelMax = 3
    with pytest.raises(TaskError, match="Too many CR pixels"):
        find_cosmic_rays(
            img.copy(), var, np.zeros(img.shape, np.int32), DEFAULT_MASK_PLANES, GaussianPsf(sigma), cfg
        )
