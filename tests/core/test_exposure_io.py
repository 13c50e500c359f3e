"""Exposure FITS round trips, PSFEx compatibility with galsim, and read errors."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from calexpress.exposure import Exposure
from calexpress.fields import ChebyshevBoundedField
from calexpress.fitsio import FitsReadError
from calexpress.geom import Box
from calexpress.photocalib import PhotoCalib
from calexpress.psf import GaussianPsf, PixelPsf
from calexpress.visitinfo import VisitInfo

NY, NX = 300, 200


def _tan_sip_wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [161.40895381759952, 2.823591013082938]
    w.wcs.crpix = [100.5, 150.5]
    w.wcs.cd = [[-2.4738359641045e-05, 4.97554017849131e-05], [4.97554017849131e-05, 2.47383596410459e-05]]
    from astropy.wcs import Sip

    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[0, 2], a[1, 1], a[3, 0] = 2.1e-6, -1.3e-6, 4.0e-7, 3.3e-10
    b[0, 2], b[2, 0], b[1, 1], b[0, 3] = 1.7e-6, -9.0e-7, 6.0e-7, -2.2e-10
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def _pixel_psf(samp: float = 0.8) -> PixelPsf:
    rng = np.random.default_rng(5)
    n = int(np.ceil(21 / samp)) | 1
    c = n // 2
    yy, xx = np.mgrid[:n, :n] - c
    s = 1.7 / samp
    basis = np.zeros((6, n, n))
    basis[0] = np.exp(-0.5 * (xx**2 / s**2 + yy**2 / (1.1 * s) ** 2))
    for k in range(1, 6):
        basis[k] = 0.04 * rng.normal() * np.exp(-0.5 * ((xx - 0.4 * k) ** 2 + yy**2) / (1.3 * s) ** 2)
    return PixelPsf(basis, samp, 2, (NX / 2 - 0.5, NY / 2 - 0.5), (NX, NY), 25)


def _exposure() -> Exposure:
    rng = np.random.default_rng(0)
    image = rng.normal(1000.0, 30.0, (NY, NX)).astype(np.float32)
    image[3, 4] = np.nan
    image[5, 6] = -np.inf
    mask = rng.integers(0, 2**14, (NY, NX)).astype(np.int32)
    variance = rng.uniform(0, 1e4, (NY, NX)).astype(np.float32)
    md = fits.Header()
    md["INSTRUME"] = ("simcam", "instrument")
    md["SATURATE"] = 61760.0
    md["COMMENT"] = "a raw comment"
    md["HIERARCH ESO DET LONG KEY"] = 3
    exp = Exposure(
        image, mask, variance,
        metadata=md,
        wcs=_tan_sip_wcs(),
        psf=_pixel_psf(),
        photo_calib=PhotoCalib(3.63, 0.02),
        ap_corr_map={
            "base_PsfFlux_instFlux": ChebyshevBoundedField(np.array([[1.02, 0.01], [0.003, 0.0]]),
                                                            Box(0, 0, NX, NY)),
            "base_GaussianFlux_instFlux": ChebyshevBoundedField(np.arange(9.0).reshape(3, 3) * 1e-3,
                                                                Box(0, 0, NX, NY)),
        },
        visit_info=VisitInfo(60.0, 61.0, Time("2026-03-01T05:06:07.5", scale="tai"), (161.4, 2.82), 12.5,
                             "SKY", (120.0, 56.6), 1.198, (-70.7, -30.2, 2663.0), 1001, "science"),
        filter="g",
    )  # fmt: skip
    exp.add_mask_plane("MY_VERY_LONG_PLANE")
    return exp


def _check_same(a: Exposure, b: Exposure) -> None:
    for plane in ("image", "mask", "variance"):
        x, y = getattr(a, plane), getattr(b, plane)
        assert x.dtype == y.dtype
        assert x.tobytes() == y.tobytes(), plane  # bit for bit, NaN and inf included
    assert a.mask_planes == b.mask_planes
    xs = np.array([0.0, 57.3, 199.0, 120.2])
    ys = np.array([0.0, 211.9, 299.0, 10.0])
    s1 = np.array(a.wcs.all_pix2world(xs, ys, 0))
    s2 = np.array(b.wcs.all_pix2world(xs, ys, 0))
    assert np.abs(s1 - s2).max() * 3600 < 1e-6
    assert b.wcs.sip is not None
    for x, y in [(10.0, 20.0), (150.3, 270.8), (99.5, 149.5)]:
        p1, p2 = a.psf.compute_image(x, y), b.psf.compute_image(x, y)
        assert np.abs(p1 - p2).max() <= 1e-6 * p1.max()
    assert b.photo_calib == a.photo_calib
    assert b.visit_info == a.visit_info
    assert b.filter == a.filter
    assert b.ap_corr_map == a.ap_corr_map
    for key in a.metadata:
        if key not in ("COMMENT", "HISTORY", ""):
            assert b.metadata[key] == a.metadata[key], key
    assert "a raw comment" in str(b.metadata["COMMENT"])


@pytest.mark.parametrize("suffix,compress", [(".fits", False), (".fits", True), (".fits.fz", False),
                                             (".fits.gz", False)])
def test_round_trip_bit_for_bit(tmp_path, suffix, compress):
    exp = _exposure()
    path = tmp_path / f"calexp{suffix}"
    exp.write(str(path), compress=compress)
    if suffix == ".fits.gz":
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    if compress or suffix == ".fits.fz":
        with fits.open(path) as hdul:
            assert isinstance(hdul["IMAGE"], fits.CompImageHDU)
        with fits.open(path, disable_image_compression=True) as hdul:
            for name in ("IMAGE", "MASK", "VARIANCE"):
                assert hdul[name].header["ZCMPTYPE"] == "GZIP_2"
                assert "ZQUANTIZ" not in hdul[name].header or hdul[name].header["ZQUANTIZ"] == "NONE"
    elif suffix == ".fits":
        # default: the int32 mask alone is RICE-compressed (lossless), image and variance stay plain
        with fits.open(path, disable_image_compression=True) as hdul:
            assert hdul["MASK"].header["ZCMPTYPE"] == "RICE_1"
            assert not isinstance(hdul["IMAGE"], fits.CompImageHDU)
            assert hdul["IMAGE"].header["BITPIX"] == -32
    back = Exposure.read(str(path))
    _check_same(exp, back)
    # and again through a file object
    with open(path, "rb") as f:
        _check_same(exp, Exposure.read(f))


def test_file_object_write_and_read():
    exp = _exposure()
    buf = io.BytesIO()
    exp.write(buf, compress=True)
    _check_same(exp, Exposure.read(io.BytesIO(buf.getvalue())))
    _check_same(exp, Exposure.read(io.BytesIO(gzip.compress(buf.getvalue()))))


def test_file_is_readable_by_astropy_alone(tmp_path):
    exp = _exposure()
    path = tmp_path / "calexp.fits"
    exp.write(str(path))
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF_DATA", "AP_CORR"]
        w = WCS(hdul["IMAGE"].header)
        assert w.sip is not None
        assert hdul["MASK"].header["MP_CR"] == 3
        assert hdul[0].header["FILTER"] == "g"
        assert hdul[0].header["PHOTCALIB"] == pytest.approx(3.63)
        assert hdul[0].header["EXPTIME"] == 60.0


def test_gaussian_psf_round_trip(tmp_path):
    exp = _exposure()
    exp.psf = GaussianPsf(2.1)
    path = tmp_path / "e.fits"
    exp.write(str(path))
    back = Exposure.read(str(path))
    assert isinstance(back.psf, GaussianPsf) and back.psf.sigma == 2.1
    np.testing.assert_array_equal(back.psf.compute_image(3.3, 4.6), exp.psf.compute_image(3.3, 4.6))


@pytest.mark.parametrize("samp", [1.0, 0.5, 0.8])
def test_galsim_des_psfex_reads_our_psf(tmp_path, samp):
    pytest.importorskip("galsim")
    import galsim
    import galsim.des

    exp = _exposure()
    exp.psf = _pixel_psf(samp)
    path = tmp_path / "calexp.fits"
    exp.write(str(path))
    with fits.open(path) as hdul:
        gpsf = galsim.des.DES_PSFEx(hdul["PSF_DATA"])
    # also as a stand-alone PSFEx file (galsim reads HDU 1)
    exp.psf.write_psfex(tmp_path / "model.psf")
    gpsf_file = galsim.des.DES_PSFEx(str(tmp_path / "model.psf"))
    ours = Exposure.read(str(path)).psf
    for x, y in [(12.3, 40.7), (100.0, 150.0), (187.6, 280.2)]:
        mine = ours.compute_image(x, y)
        n = mine.shape[0]
        for g in (gpsf, gpsf_file):
            # galsim's image_pos is 1-based (PSFEx X_IMAGE); the model already includes the pixel
            prof = g.getPSF(galsim.PositionD(x + 1.0, y + 1.0))
            drawn = prof.drawImage(nx=n, ny=n, scale=1.0, method="no_pixel",
                                   offset=(x - round(x), y - round(y))).array
            assert abs(drawn.sum() - 1.0) < 1e-3
            drawn = drawn / drawn.sum()
            assert np.abs(drawn - mine).max() <= 1e-4 * mine.max()
            np.testing.assert_allclose(drawn, mine, rtol=1e-4, atol=1e-4 * mine.max())


def test_truncated_file_names_file_and_problem(tmp_path):
    exp = _exposure()
    path = tmp_path / "calexp.fits"
    exp.write(str(path))
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 2880, 100):
        bad = tmp_path / f"cut{cut}.fits"
        bad.write_bytes(data[:cut])
        with pytest.raises(FitsReadError) as info:
            Exposure.read(str(bad))
        msg = str(info.value)
        assert str(bad) in msg and "\n" not in msg
        assert "truncated" in msg or "corrupt" in msg
    gz = tmp_path / "cut.fits.gz"
    gz.write_bytes(gzip.compress(data)[:5000])
    with pytest.raises(FitsReadError, match="cut.fits.gz"):
        Exposure.read(str(gz))
    with pytest.raises(FitsReadError, match="no such file"):
        Exposure.read(str(tmp_path / "missing.fits"))
    notfits = tmp_path / "x.fits"
    notfits.write_bytes(b"hello" * 1000)
    with pytest.raises(FitsReadError, match="not a FITS file"):
        Exposure.read(str(notfits))
    only_primary = tmp_path / "p.fits"
    fits.PrimaryHDU().writeto(only_primary)
    with pytest.raises(FitsReadError, match="no IMAGE extension"):
        Exposure.read(str(only_primary))


def test_mask_planes_and_clone():
    exp = _exposure()
    bit = exp.add_mask_plane("NEWPLANE")
    assert bit not in [b for n, b in exp.mask_planes.items() if n != "NEWPLANE"]
    assert exp.get_plane_bitmask("BAD", "SAT") == 3
    assert exp.get_plane_bitmask("OTHER") == 1 << exp.mask_planes["OTHER"]
    c = exp.clone()
    c.image[0, 0] = -1
    c.metadata["NEW"] = 1
    assert exp.image[0, 0] != -1 and "NEW" not in exp.metadata


class _StreamOnly:
    """A read-only, non-seekable stream (like an HTTP body or some fsspec readers)."""

    def __init__(self, data: bytes, name: str) -> None:
        self._buf = io.BytesIO(data)
        self.path = name

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)

    def seekable(self) -> bool:
        return False


def test_non_seekable_stream_and_error_names_it(tmp_path):
    exp = _exposure()
    buf = io.BytesIO()
    exp.write(buf)
    data = buf.getvalue()
    _check_same(exp, Exposure.read(_StreamOnly(data, "bucket/calexp.fits")))
    with pytest.raises(FitsReadError, match=r"^bucket/short\.fits: truncated"):
        Exposure.read(_StreamOnly(data[:10000], "bucket/short.fits"))


def test_plain_image_file_is_read(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    hdr = fits.Header({"OBJECT": "x", "EXPTIME": 5.0})
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(data, hdr).writeto(path)
    exp = Exposure.read(str(path))
    assert exp.image.dtype == np.float32 and np.array_equal(exp.image, data)
    assert exp.metadata["OBJECT"] == "x" and exp.visit_info.exposure_time == 5.0
    assert not exp.mask.any()


def test_subset_keeps_sky_positions():
    exp = _exposure()
    box = Box(30, 50, 100, 120)
    sub = exp.subset(box)
    assert sub.shape == (120, 100)
    assert np.array_equal(sub.image, exp.image[50:170, 30:130], equal_nan=True)
    xs, ys = np.array([0.0, 10.5, 99.0]), np.array([0.0, 77.2, 119.0])
    a = np.array(exp.wcs.all_pix2world(xs + 30, ys + 50, 0))
    b = np.array(sub.wcs.all_pix2world(xs, ys, 0))
    assert np.abs(a - b).max() * 3600 < 1e-6
