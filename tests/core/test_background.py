"""Background estimation against simcamA truth, LSST cell geometry, and the FITS round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from calexpress.background import (
    BackgroundComponent,
    BackgroundError,
    BackgroundList,
    cell_edges,
    estimate_background,
)
from calexpress.fitsio import FitsReadError
from scipy import ndimage

FRAME = "simcamA_0001001_g_det0"
READ_NOISE = 6.0  # e-, the largest of the simcamA amplifiers (~4-6.6 e-)
DETECTED, SAT = 1 << 5, 1 << 1


def test_cell_edges_follow_lsst():
    # reference section 2.2: 1018 x 2000 with binSize 128 gives 8 x 16 cells
    assert cell_edges(1018, 128).size - 1 == 8
    assert cell_edges(2000, 128).size - 1 == 16
    e = cell_edges(1018, 128)
    n = 8
    assert e[0] == 0 and e[-1] == 1018
    for i in range(n):
        assert e[i + 1] == min(((i + 1) * 1018 + n // 2) // n, 1018)


def _load_truth(simcam_dir, frame):
    with fits.open(simcam_dir / "truth" / frame / "truth_image.fits") as hdul:
        image = hdul["IMAGE"].data.astype(np.float32)
        sky = hdul["SKY"].data.astype(np.float32)
        tmask = hdul["MASK"].data.astype(np.int32)
    rng = np.random.default_rng(12345)
    noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * np.sqrt(image + READ_NOISE**2)
    sigma = float(np.sqrt(np.median(sky) + READ_NOISE**2))
    sat = (tmask & 4) > 0
    far_from_sat = ~ndimage.binary_dilation(sat, iterations=50)
    return image, sky, noisy.astype(np.float32), sat, far_from_sat, sigma


@pytest.fixture(scope="module")
def truth(simcam_dir):
    return _load_truth(simcam_dir, FRAME)


@pytest.mark.parametrize(
    "approx,bin_size,mask_kind",
    [("chebyshev", 128, "truth"), ("chebyshev", 128, "noisy"), ("spline", 256, "truth")],
)
def test_background_against_truth_sky(truth, approx, bin_size, mask_kind):
    _check_against_truth(truth, approx, bin_size, mask_kind)


@pytest.mark.parametrize("frame", ["simcamA_0001002_r_det0", "simcamA_0001003_r_det0"])
def test_background_other_frames(simcam_dir, frame):
    _check_against_truth(_load_truth(simcam_dir, frame), "chebyshev", 128, "noisy")


def _check_against_truth(truth, approx, bin_size, mask_kind):
    image, sky, noisy, sat, far, sigma = truth
    if mask_kind == "truth":  # objects brighter than 1 sigma per pixel, grown by 3 px
        det = ndimage.binary_dilation((image - sky) > sigma, iterations=3)
    else:  # what a detection pass sees: 5 sigma in a 1.5-px Gaussian-smoothed image, grown by 4 px
        sm = ndimage.gaussian_filter(noisy - np.median(noisy), 1.5)
        det = ndimage.binary_dilation(sm > 5 * sigma / (2 * np.sqrt(np.pi) * 1.5), iterations=4)
    mask = np.where(det, DETECTED, 0).astype(np.int32) | np.where(sat, SAT, 0).astype(np.int32)
    comp = estimate_background(noisy, mask, DETECTED | SAT, bin_size=bin_size, approx=approx)
    model = comp.get_image()
    assert model.shape == sky.shape and model.dtype == np.float32
    resid = (model - sky)[far]
    rms = float(np.sqrt(np.mean(resid**2)))
    print(f"{approx} bin {bin_size} mask {mask_kind}: rms/noise = {rms / sigma:.4f}")
    assert rms <= 0.1 * sigma
    # a null test: the result is far from a constant at the wrong level
    assert abs(float(np.mean(resid))) < 0.05 * sigma


def test_chebyshev_order_reduced_when_undersampled():
    rng = np.random.default_rng(0)
    img = (100 + rng.normal(0, 1, (300, 700))).astype(np.float32)
    comp = estimate_background(img, None, 0, bin_size=128, order=6)
    assert comp.values.shape == (3, 6)
    assert comp.order_x == comp.order_y == 2  # min(nx, ny) - 1
    assert abs(float(comp.get_image().mean()) - 100) < 0.05


def test_all_masked_raises():
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(BackgroundError, match="All pixels masked"):
        estimate_background(img, np.ones((64, 64), np.int32), 1)


@pytest.mark.parametrize("approx", ["chebyshev", "spline", "constant"])
def test_background_list_round_trip(tmp_path, approx):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:400, :300]
    img = (50 + 0.01 * xx - 0.02 * yy + rng.normal(0, 2, xx.shape)).astype(np.float32)
    mask = np.zeros(img.shape, np.int32)
    mask[100:150, 100:150] = 1  # a fully masked cell stays NaN and is skipped
    bl = BackgroundList([estimate_background(img, mask, 1, bin_size=40, approx=approx),
                         estimate_background(img * 0.01, None, 0, bin_size=200)])
    full = bl.get_image()
    path = tmp_path / "bkgd.fits"
    bl.write(str(path))
    back = BackgroundList.read(str(path))
    assert len(back) == 2 and isinstance(back[0], BackgroundComponent)
    assert back.get_image().tobytes() == full.tobytes()
    buf = io.BytesIO()
    bl.write(buf)
    assert BackgroundList.read(io.BytesIO(buf.getvalue())).get_image().tobytes() == full.tobytes()
    assert back[0].approx == approx
    np.testing.assert_array_equal(back[0].values, bl[0].values)
    bad = tmp_path / "bad.fits"
    bad.write_bytes(path.read_bytes()[:-2880])
    with pytest.raises(FitsReadError, match="bad.fits"):
        BackgroundList.read(str(bad))


def test_noiseless_image_and_nan_pixels():
    yy, xx = np.mgrid[:256, :384]
    img = (10.0 + 0.01 * xx + 0.002 * yy).astype(np.float32)  # a plane: every cell variance is ~0
    img[5, 5] = np.nan
    for approx in ("chebyshev", "spline", "constant"):
        model = estimate_background(img, None, 0, bin_size=64, approx=approx).get_image()
        assert np.isfinite(model).all()
        if approx != "constant":
            good = np.isfinite(img)
            assert np.abs(model - img)[good].max() < 0.05
