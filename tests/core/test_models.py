"""PSF models, Chebyshev bounded fields, photometric calibration and visit info."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from calexpress.fields import ChebyshevBoundedField, fields_from_table, fields_to_table
from calexpress.geom import Box
from calexpress.photocalib import PhotoCalib
from calexpress.psf import GaussianPsf, PixelPsf, adaptive_moments
from calexpress.visitinfo import VisitInfo


def _elliptical_gaussian(n, ixx, iyy, ixy, dx=0.0, dy=0.0, oversample=1):
    """Pixel-centre samples of a 2-D Gaussian with covariance [[ixx, ixy], [ixy, iyy]]."""
    c = n // 2
    yy, xx = np.mgrid[:n, :n].astype(float) - c
    xx -= dx
    yy -= dy
    det = ixx * iyy - ixy**2
    img = np.exp(-0.5 * (iyy * xx**2 - 2 * ixy * xx * yy + ixx * yy**2) / det)
    return img / img.sum()


def test_adaptive_moments_of_elliptical_gaussian():
    img = _elliptical_gaussian(41, 5.0, 3.0, 1.2, dx=0.3, dy=-0.2)
    ixx, iyy, ixy, xc, yc = adaptive_moments(img)
    assert (ixx, iyy, ixy) == (pytest.approx(5.0, rel=1e-6), pytest.approx(3.0, rel=1e-6),
                               pytest.approx(1.2, rel=1e-5))
    assert (xc, yc) == (pytest.approx(20.3, abs=1e-6), pytest.approx(19.8, abs=1e-6))


def test_gaussian_psf():
    psf = GaussianPsf(2.0)
    assert psf.size % 2 == 1 and psf.size >= 21
    k = psf.compute_kernel_image(10, 10)
    assert k.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(k), k.shape) == (psf.size // 2, psf.size // 2)
    assert psf.compute_shape(0, 0) == (4.0, 4.0, 0.0)
    assert psf.determinant_radius() == pytest.approx(2.0)
    img = psf.compute_image(100.3, 50.6)  # central pixel (100, 51): model centre at +0.3, -0.4
    ixx, iyy, ixy, xc, yc = adaptive_moments(img)
    c = psf.size // 2
    assert (xc - c, yc - c) == (pytest.approx(0.3, abs=1e-6), pytest.approx(-0.4, abs=1e-6))
    assert ixx == pytest.approx(4.0, rel=1e-4)


def _varying_pixel_psf(samp):
    """A PixelPsf whose basis encodes sigma_x = 1.8 + 0.3 * X (X the scaled x) to first order."""
    n = int(math.ceil(31 / samp)) | 1
    c = n // 2
    yy, xx = (np.mgrid[:n, :n] - c) * samp  # pixel units
    s0, ds = 1.8, 0.3
    g0 = np.exp(-0.5 * (xx**2 + yy**2) / s0**2)
    dg = g0 * xx**2 / s0**3 * ds  # d/ds of exp(-x^2/2s^2) at s0, times ds
    basis = np.zeros((3, n, n))
    basis[0], basis[1] = g0, dg
    return PixelPsf(basis, samp, 1, (1000.0, 2000.0), (1000.0, 2000.0), 25)


@pytest.mark.parametrize("samp", [1.0, 0.5])
def test_pixel_psf_terms_shift_and_shape(samp):
    psf = _varying_pixel_psf(samp)
    # PSFEx term order for degree 2: 1, x, x^2, y, xy, y^2
    t = PixelPsf(np.zeros((6, 3, 3)), 1.0, 2, (0, 0), (1, 1), 3).terms(2.0, 3.0)
    np.testing.assert_allclose(t, [1, 2, 4, 3, 6, 9])
    k0 = psf.compute_kernel_image(1000.0, 2000.0)
    assert k0.sum() == pytest.approx(1.0) and k0.shape == (25, 25)
    ixx0, iyy0, _ = psf.compute_shape(1000.0, 2000.0)
    assert ixx0 == pytest.approx(1.8**2, rel=2e-3) and iyy0 == pytest.approx(1.8**2, rel=2e-3)
    ixx1, iyy1, _ = psf.compute_shape(1500.0, 2000.0)  # X = 0.5 -> sigma_x ~ 1.95
    assert ixx1 > ixx0 * 1.1 and iyy1 == pytest.approx(iyy0, rel=0.02)
    img = psf.compute_image(1000.4, 1999.7)
    _, _, _, xc, yc = adaptive_moments(img)
    # Lanczos-3 resampling (as PSFEx and galsim) moves the centroid by a few mpx at most
    assert (xc - 12, yc - 12) == (pytest.approx(0.4, abs=0.01), pytest.approx(-0.3, abs=0.01))
    assert psf.average_position() == (1000.0, 2000.0)


def test_pixel_psf_hdu_round_trip_and_headers():
    psf = _varying_pixel_psf(0.5)
    hdu = psf.to_hdu()
    h = hdu.header
    assert h["EXTNAME"] == "PSF_DATA" and h["POLNAME1"] == "X_IMAGE" and h["POLNAME2"] == "Y_IMAGE"
    assert h["POLZERO1"] == 1001.0 and h["POLZERO2"] == 2001.0  # 1-based, as PSFEx
    assert (h["PSFAXIS1"], h["PSFAXIS2"], h["PSFAXIS3"]) == (psf.basis.shape[2], psf.basis.shape[1], 3)
    assert h["PSF_SAMP"] == 0.5 and h["POLDEG1"] == 1
    assert h["PSF_FWHM"] == pytest.approx(2.355 * 1.8, rel=0.01)
    back = PixelPsf.from_hdu(fits.BinTableHDU(hdu.data, hdu.header))
    for x, y in [(0, 0), (1999.3, 3999.6)]:
        np.testing.assert_array_equal(back.compute_image(x, y), psf.compute_image(x, y))


def test_chebyshev_field_fit_evaluate_and_table():
    bbox = Box(0, 0, 2048, 4096)
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.5, 2047.5, 400)
    y = rng.uniform(-0.5, 4095.5, 400)
    xn = (x + 0.5) / 2048 * 2 - 1
    yn = (y + 0.5) / 4096 * 2 - 1
    z = 1.0 + 0.02 * xn - 0.01 * yn + 0.005 * (2 * xn**2 - 1) + 0.003 * xn * yn
    f = ChebyshevBoundedField.fit(x, y, z, bbox, 2, 2, triangular=True)
    assert f.coefficients.shape == (3, 3)
    assert f.coefficients[2, 2] == 0 and f.coefficients[1, 2] == 0 and f.coefficients[2, 1] == 0
    np.testing.assert_allclose(f.coefficients[0], [1.0, 0.02, 0.005], atol=1e-12)
    np.testing.assert_allclose(f.coefficients[:, 0], [1.0, -0.01, 0.0], atol=1e-12)
    assert f.coefficients[1, 1] == pytest.approx(0.003)
    assert f.evaluate(-0.5, -0.5) == pytest.approx(1.0 - 0.02 + 0.01 + 0.005 + 0.003)
    img = ChebyshevBoundedField(f.coefficients, Box(0, 0, 64, 32)).evaluate_image()
    yy, xx = np.mgrid[:32, :64]
    np.testing.assert_allclose(img, ChebyshevBoundedField(f.coefficients, Box(0, 0, 64, 32)).evaluate(xx, yy))
    # weights: an outlier with ~zero weight does not move the fit
    z2 = z.copy()
    z2[0] += 100
    w = np.ones_like(z)
    w[0] = 1e-12
    f2 = ChebyshevBoundedField.fit(x, y, z2, bbox, 2, 2, weights=w)
    np.testing.assert_allclose(f2.coefficients, f.coefficients, atol=1e-9)
    # table round trip with fields of different orders
    fields = {"a": f, "b": ChebyshevBoundedField([[2.0]], bbox)}
    t = fields_to_table(fields)
    assert isinstance(t, Table) and len(t) == 2
    assert fields_from_table(t) == fields
    assert ChebyshevBoundedField.from_table(f.to_table("x")) == f
    with pytest.raises(ValueError, match="cannot fit"):
        ChebyshevBoundedField.fit(x[:3], y[:3], z[:3], bbox, 2, 2)


def test_photocalib():
    pc = PhotoCalib.from_zero_point(27.0, 0.01)
    assert pc.calibration == pytest.approx(10 ** (-0.4 * (27.0 - 31.4)))
    assert pc.zero_point == pytest.approx(27.0)
    assert pc.zero_point_err == pytest.approx(0.01)
    assert pc.instflux_to_magnitude(1.0) == pytest.approx(27.0)
    assert pc.instflux_to_magnitude(100.0) == pytest.approx(22.0)
    njy, err = pc.instflux_to_nanojansky(np.array([100.0, 200.0]), np.array([10.0, 0.0]))
    np.testing.assert_allclose(njy, [100 * pc.calibration, 200 * pc.calibration])
    np.testing.assert_allclose(err, np.hypot([10 * pc.calibration, 0], [100 * pc.calibration_err,
                                                                           200 * pc.calibration_err]))
    mag, magerr = pc.instflux_to_magnitude(100.0, 10.0)
    assert magerr == pytest.approx(2.5 / math.log(10) * math.hypot(0.1, pc.calibration_err / pc.calibration))
    assert np.isnan(pc.instflux_to_magnitude(np.array([-1.0]))[0])
    h = fits.Header()
    pc.to_header(h)
    assert PhotoCalib.from_header(h) == pc
    assert PhotoCalib.from_header(fits.Header()) is None


def test_visit_info_header_round_trip():
    vi = VisitInfo(30.0, 31.5, Time(60000.25, format="mjd", scale="tai"), (10.5, -20.25), -33.0, "SKY",
                   (200.0, 45.0), 1.41, (-70.749417, -30.244633, 2663.0), 42, "science")
    h = vi.to_header()
    assert h["EXPTIME"] == 30.0 and h["BORE-RA"] == 10.5 and h["ROTTYPE"] == "SKY"
    assert h["MJD-AVG"] == pytest.approx(60000.25)
    back = VisitInfo.from_header(h)
    assert back == vi
    assert abs((back.date - vi.date).to_value("s")) < 1e-6
    assert VisitInfo.from_dict(vi.to_dict()) == vi
    empty = VisitInfo.from_header(fits.Header())
    assert math.isnan(empty.exposure_time) and empty.date is None and empty.boresight_ra_dec is None


def test_adaptive_moments_match_truth_hsm(simcam_dir):
    path = simcam_dir / "truth" / "simcamA_0001001_g_det0" / "truth_psf.fits"
    with fits.open(path) as hdul:
        cube = hdul[0].data.astype(float)
        grid = Table.read(hdul["GRID"])
    for k in (0, 12, 24):
        ixx, iyy, ixy, _, _ = adaptive_moments(cube[k])
        assert ixx == pytest.approx(grid["ixx_hsm"][k], rel=1e-5)
        assert iyy == pytest.approx(grid["iyy_hsm"][k], rel=1e-5)
        assert ixy == pytest.approx(grid["ixy_hsm"][k], rel=1e-4, abs=1e-6)
