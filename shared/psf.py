"""Point-spread functions: the `Psf` interface, `GaussianPsf` and the PSFEx-like `PixelPsf`.

Conventions: pixel centres at integers (0-based).  ``compute_kernel_image(x, y)`` is an odd square image with
unit sum whose model centre is the central pixel; ``compute_image(x, y)`` is the same model shifted by the
fractional part of ``(x, y)``: its central pixel is ``(center_pixel(x), center_pixel(y))``
(``floor(v + 0.5)``, LSST's rounding, so 2.5 -> 3) and the model centre is at ``(x, y)``.

`PixelPsf` is the model PSFEx writes (and ``galsim.des.DES_PSFEx`` reads): ``ncoeff`` basis images on a grid
with ``PSF_SAMP`` image pixels per sample, combined with a 2-D polynomial of degree ``POLDEG1`` in
``((x - polzero_x)/polscal_x, (y - polzero_y)/polscal_y)`` with PSFEx's term order
(``x**i * y**j`` for ``j`` in 0..d, ``i`` in 0..d-j, ``i`` fastest).  Pixel-grid images are resampled with
a Lanczos-3 kernel whose weights are renormalised to unit sum (galsim's ``conserve_dc`` to 1e-5).
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits

__all__ = [
    "GaussianPsf",
    "PixelPsf",
    "Psf",
    "adaptive_moments",
    "center_pixel",
    "lanczos_weights",
    "psfex_terms",
]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ----------------------------------------------------------------------------------------------------
# helpers


def _lanczos(x: np.ndarray, n: int = 3) -> np.ndarray:
    x = np.abs(x)
    out = np.sinc(x) * np.sinc(x / n)
    out[x >= n] = 0.0
    return out


def lanczos_weights(positions: np.ndarray, nsamp: int, n: int = 3) -> np.ndarray:
    """Interpolation weights ``(len(positions), nsamp)`` for 1-D sample coordinates.

    ``positions`` are in units of samples (sample ``k`` sits at ``k``).  Each row is a Lanczos-``n``
    kernel renormalised to unit sum over the samples it touches, so a constant field is reproduced.
    Rows of positions beyond the grid are all zero.
    """
    positions = np.asarray(positions, dtype=float)
    k = np.arange(nsamp, dtype=float)
    w = _lanczos(positions[:, None] - k[None, :], n)
    # normalise with the full (untruncated-by-grid) kernel sum, as galsim conserves DC for an infinite grid
    frac = positions - np.floor(positions)
    taps = np.arange(-n + 1, n + 1, dtype=float)
    full = _lanczos(frac[:, None] - taps[None, :], n).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / np.where(full != 0, full, 1.0)[:, None]
    return w


def psfex_terms(x: float, y: float, degree: int) -> np.ndarray:
    """PSFEx polynomial terms ``[x**i * y**j for j in 0..d for i in 0..d-j]`` (scaled coordinates)."""
    xp = x ** np.arange(degree + 1)
    yp = y ** np.arange(degree + 1)
    return np.array([xp[i] * yp[j] for j in range(degree + 1) for i in range(degree + 1 - j)])


def adaptive_moments(
    image: np.ndarray,
    x0: float | None = None,
    y0: float | None = None,
    sigma_guess: float | None = None,
    max_iter: int = 100,
    tol: float = 1e-7,
) -> tuple[float, float, float, float, float]:
    """Adaptive (elliptical-Gaussian-weighted) second moments of a postage stamp.

    The weight's covariance and centre are iterated until the weight matches the object
    (SdssShape / HSM convention: for a Gaussian of covariance ``S`` the result is ``S``).

    Parameters
    ----------
    image : `numpy.ndarray`
        2-D stamp ``[y, x]``.
    x0, y0 : `float`, optional
        Starting centre (default: the stamp centre).
    sigma_guess : `float`, optional
        Starting weight sigma (default: from unweighted moments, clipped to [0.5, stamp/4]).

    Returns
    -------
    ixx, iyy, ixy, xc, yc : `float`
        Moments in pixels^2 and the centroid (stamp pixel coordinates).

    Raises
    ------
    ValueError
        If the iteration fails (no positive flux or singular moments).
    """
    img = np.asarray(image, dtype=float)
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    xc = (nx - 1) / 2.0 if x0 is None else float(x0)
    yc = (ny - 1) / 2.0 if y0 is None else float(y0)
    if sigma_guess is None:
        pos = np.clip(img, 0, None)
        tot = pos.sum()
        if tot <= 0:
            raise ValueError("adaptive_moments: no positive flux")
        s2 = float(((xx - xc) ** 2 + (yy - yc) ** 2).ravel() @ pos.ravel() / (2 * tot))
        sigma_guess = min(max(math.sqrt(max(s2, 0.0)), 0.5), max(nx, ny) / 4.0)
    mxx = myy = sigma_guess**2
    mxy = 0.0
    for _ in range(max_iter):
        det = mxx * myy - mxy * mxy
        if det <= 0:
            raise ValueError("adaptive_moments: singular weight")
        ixx_, iyy_, ixy_ = myy / det, mxx / det, -mxy / det  # inverse covariance
        dx = xx - xc
        dy = yy - yc
        arg = 0.5 * (ixx_ * dx * dx + 2 * ixy_ * dx * dy + iyy_ * dy * dy)
        w = np.exp(-np.minimum(arg, 700.0)) * img
        s0 = w.sum()
        if not s0 > 0:
            raise ValueError("adaptive_moments: non-positive weighted flux")
        sx = (w * dx).sum() / s0
        sy = (w * dy).sum() / s0
        qxx = (w * dx * dx).sum() / s0
        qyy = (w * dy * dy).sum() / s0
        qxy = (w * dx * dy).sum() / s0
        # weighted moments Q of an object S with weight M: Q^-1 = S^-1 + M^-1  =>  S = (Q^-1 - M^-1)^-1
        qdet = qxx * qyy - qxy * qxy
        if qdet <= 0:
            raise ValueError("adaptive_moments: singular moments")
        a = qyy / qdet - ixx_
        b = -qxy / qdet - ixy_
        c = qxx / qdet - iyy_
        sdet = a * c - b * b
        if a > 0 and c > 0 and sdet > 0:
            nxx, nyy, nxy = c / sdet, a / sdet, -b / sdet
        else:  # weight much smaller than the object: double it
            nxx, nyy, nxy = 2 * qxx, 2 * qyy, 2 * qxy
        # centroid: the weighted mean moves by (M^-1 + S^-1)^-1 S^-1 d; for S ~ M the shift is d/2
        xc += 2.0 * sx
        yc += 2.0 * sy
        change = max(abs(nxx - mxx), abs(nyy - myy), abs(nxy - mxy)) / max(nxx + nyy, 1e-12)
        mxx, myy, mxy = nxx, nyy, nxy
        if change < tol and abs(sx) < tol and abs(sy) < tol:
            break
    return float(mxx), float(myy), float(mxy), float(xc), float(yc)


def center_pixel(v: float) -> int:
    """Index of the pixel containing ``v`` (pixel centres at integers): ``floor(v + 0.5)``."""
    return int(math.floor(v + 0.5))


def _odd(n: int) -> int:
    n = int(n)
    return n if n % 2 == 1 else n + 1


# ----------------------------------------------------------------------------------------------------
class Psf:
    """Abstract PSF.  Subclasses implement `compute_kernel_image` and may override the others."""

    #: Size (pixels, odd) of the images returned.
    size: int = 0

    def compute_kernel_image(self, x: float, y: float) -> np.ndarray:  # pragma: no cover - abstract
        """Odd square image with unit sum, model centred on the central pixel."""
        raise NotImplementedError

    def compute_image(self, x: float, y: float) -> np.ndarray:
        """Model centred on ``(x, y)``; central pixel = ``(center_pixel(x), center_pixel(y))``; unit sum.

        The default shifts the kernel image by the fractional offset with Lanczos-3 interpolation.
        """
        kern = self.compute_kernel_image(x, y)
        dx, dy = x - center_pixel(x), y - center_pixel(y)
        if dx == 0 and dy == 0:
            return kern
        n = kern.shape[0]
        c = n // 2
        pos = np.arange(n) - c
        wx = lanczos_weights(pos - dx + c, n)
        wy = lanczos_weights(pos - dy + c, n)
        out = wy @ kern @ wx.T
        return out / out.sum()

    def compute_shape(self, x: float | None = None, y: float | None = None) -> tuple[float, float, float]:
        """Adaptive moments ``(Ixx, Iyy, Ixy)`` of the kernel image, pixels^2."""
        if x is None or y is None:
            x, y = self.average_position()
        ixx, iyy, ixy, _, _ = adaptive_moments(self.compute_kernel_image(x, y))
        return ixx, iyy, ixy

    def determinant_radius(self, x: float | None = None, y: float | None = None) -> float:
        """``(Ixx*Iyy - Ixy**2) ** 0.25``, pixels."""
        ixx, iyy, ixy = self.compute_shape(x, y)
        return float((ixx * iyy - ixy * ixy) ** 0.25)

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """Gaussian-equivalent FWHM from the determinant radius, pixels."""
        return _FWHM_PER_SIGMA * self.determinant_radius(x, y)

    def average_position(self) -> tuple[float, float]:
        """Representative position of the model (LSST ``getAveragePosition``)."""
        return (0.0, 0.0)

    def compute_peak(self, x: float, y: float) -> float:
        """Peak value of `compute_image` at ``(x, y)``."""
        return float(self.compute_image(x, y).max())

    def compute_aperture_flux(self, radius: float, x: float | None = None, y: float | None = None) -> float:
        """Fraction of the (unit) flux inside a circular aperture of ``radius`` pixels (pixel-centre test)."""
        if x is None or y is None:
            x, y = self.average_position()
        img = self.compute_kernel_image(x, y)
        c = img.shape[0] // 2
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]] - c
        return float(img[xx * xx + yy * yy <= radius * radius].sum())


class GaussianPsf(Psf):
    """Circular Gaussian PSF evaluated at pixel centres (LSST ``GaussianPsf``).

    Parameters
    ----------
    sigma : `float`
        Standard deviation, pixels.
    size : `int`, optional
        Image size (made odd); default ``2 * ceil(5 sigma) + 1``, at least 11 (LSST's default width).
    average_position : (`float`, `float`), optional
    """

    def __init__(
        self, sigma: float, size: int | None = None, average_position: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.size = _odd(size if size is not None else max(11, 2 * math.ceil(5 * sigma) + 1))
        self._avg = (float(average_position[0]), float(average_position[1]))

    def __repr__(self) -> str:
        return f"GaussianPsf(sigma={self.sigma!r}, size={self.size!r})"

    @classmethod
    def from_fwhm(cls, fwhm: float, size: int | None = None) -> GaussianPsf:
        return cls(fwhm / _FWHM_PER_SIGMA, size)

    def _draw(self, dx: float, dy: float) -> np.ndarray:
        c = self.size // 2
        p = np.arange(self.size) - c
        gx = np.exp(-0.5 * ((p - dx) / self.sigma) ** 2)
        gy = np.exp(-0.5 * ((p - dy) / self.sigma) ** 2)
        img = np.outer(gy, gx)
        return img / img.sum()

    def compute_kernel_image(self, x: float = 0.0, y: float = 0.0) -> np.ndarray:
        return self._draw(0.0, 0.0)

    def compute_image(self, x: float, y: float) -> np.ndarray:
        return self._draw(x - center_pixel(x), y - center_pixel(y))

    def compute_shape(self, x=None, y=None) -> tuple[float, float, float]:
        s2 = self.sigma**2
        return (s2, s2, 0.0)

    def average_position(self) -> tuple[float, float]:
        return self._avg


class PixelPsf(Psf):
    """PSFEx-like PSF: basis images on a sub-sampled grid times a 2-D polynomial in position.

    Parameters
    ----------
    basis : `numpy.ndarray`
        ``(ncoeff, ny, nx)`` basis images (``ny``, ``nx`` odd; centre = sample ``(ny//2, nx//2)``),
        ``ncoeff = (poldeg + 1) * (poldeg + 2) / 2`` in PSFEx order.
    sampling : `float`
        Image pixels per basis sample (PSFEx ``PSF_SAMP``; < 1 means oversampled).
    poldeg : `int`
        Polynomial degree.
    polzero : (`float`, `float`)
        Polynomial origin, 0-based pixel coordinates (stored 1-based in ``POLZERO1/2``).
    polscal : (`float`, `float`)
        Polynomial scale, pixels.
    size : `int`
        Size of the pixel images returned (made odd).
    """

    def __init__(
        self,
        basis: np.ndarray,
        sampling: float,
        poldeg: int,
        polzero: tuple[float, float],
        polscal: tuple[float, float],
        size: int,
    ) -> None:
        # stored as float32, the precision of the PSF_MASK column, so that a file round trip is exact
        basis = np.asarray(basis, dtype=np.float32)
        if basis.ndim == 2:
            basis = basis[None]
        nterm = (poldeg + 1) * (poldeg + 2) // 2
        if basis.ndim != 3 or basis.shape[0] != nterm:
            raise ValueError(f"basis must be (ncoeff={nterm}, ny, nx) for poldeg {poldeg}, got {basis.shape}")
        self.basis = basis
        self.sampling = float(sampling)
        self.poldeg = int(poldeg)
        self.polzero = (float(polzero[0]), float(polzero[1]))
        self.polscal = (float(polscal[0]), float(polscal[1]))
        self.size = _odd(size)
        #: PSFEx bookkeeping written to ``LOADED`` / ``ACCEPTED`` / ``CHI2`` (set by the PSF determiner).
        self.n_loaded = 0
        self.n_accepted = 0
        self.chi2 = float("nan")

    def __repr__(self) -> str:
        return (
            f"PixelPsf(ncoeff={self.basis.shape[0]}, basis={self.basis.shape[1:]}, sampling={self.sampling}, "
            f"poldeg={self.poldeg}, size={self.size})"
        )

    # ------------------------------------------------------------------------------------------------
    def terms(self, x: float, y: float) -> np.ndarray:
        """Polynomial terms at 0-based pixel position ``(x, y)``."""
        return psfex_terms(
            (x - self.polzero[0]) / self.polscal[0], (y - self.polzero[1]) / self.polscal[1], self.poldeg
        )

    def sampled_image(self, x: float, y: float) -> np.ndarray:
        """Model on the basis (sub-sampled) grid at ``(x, y)`` (what PSFEx/galsim call the PSF array)."""
        return np.tensordot(self.terms(x, y), self.basis.astype(np.float64), axes=(0, 0))

    def _resample(self, x: float, y: float, dx: float, dy: float) -> np.ndarray:
        samp = self.sampled_image(x, y)
        nby, nbx = samp.shape
        c = self.size // 2
        p = np.arange(self.size) - c
        wx = lanczos_weights((p - dx) / self.sampling + nbx // 2, nbx)
        wy = lanczos_weights((p - dy) / self.sampling + nby // 2, nby)
        img = wy @ samp @ wx.T
        total = img.sum()
        if not total != 0:
            raise ValueError(f"PSF model has zero flux at ({x}, {y})")
        return img / total

    def compute_kernel_image(self, x: float, y: float) -> np.ndarray:
        return self._resample(x, y, 0.0, 0.0)

    def compute_image(self, x: float, y: float) -> np.ndarray:
        return self._resample(x, y, x - center_pixel(x), y - center_pixel(y))

    def average_position(self) -> tuple[float, float]:
        return self.polzero

    # ------------------------------------------------------------------------------------------------
    def to_hdu(self) -> fits.BinTableHDU:
        """PSFEx-format ``PSF_DATA`` table (readable by ``galsim.des.DES_PSFEx``)."""
        ncoeff, ny, nx = self.basis.shape
        col = fits.Column(
            name="PSF_MASK",
            format=f"{ncoeff * ny * nx}E",
            dim=f"({nx},{ny},{ncoeff})",
            array=self.basis.astype(np.float32)[None],
        )
        hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
        h = hdu.header
        h["LOADED"] = (int(self.n_loaded), "number of loaded sources")
        h["ACCEPTED"] = (int(self.n_accepted), "number of accepted sources")
        if math.isfinite(self.chi2):
            h["CHI2"] = (float(self.chi2), "final reduced chi2")
        h["POLNAXIS"] = (2, "number of context parameters")
        h["POLGRP1"] = (1, "polynom group for this context parameter")
        h["POLNAME1"] = ("X_IMAGE", "name of this context parameter")
        h["POLZERO1"] = (self.polzero[0] + 1.0, "offset of this context parameter (1-based)")
        h["POLSCAL1"] = (self.polscal[0], "scale value for this context parameter")
        h["POLGRP2"] = (1, "polynom group for this context parameter")
        h["POLNAME2"] = ("Y_IMAGE", "name of this context parameter")
        h["POLZERO2"] = (self.polzero[1] + 1.0, "offset of this context parameter (1-based)")
        h["POLSCAL2"] = (self.polscal[1], "scale value for this context parameter")
        h["POLNGRP"] = (1, "number of polynom groups")
        h["POLDEG1"] = (self.poldeg, "polynom degree")
        h["PSF_FWHM"] = (float(self.fwhm()), "PSF FWHM in image pixels")
        h["PSF_SAMP"] = (self.sampling, "sampling step of the PSF data (image pixels)")
        h["PSFNAXIS"] = (3, "dimensionality of the PSF data")
        h["PSFAXIS1"] = (nx, "number of element along this axis")
        h["PSFAXIS2"] = (ny, "number of element along this axis")
        h["PSFAXIS3"] = (ncoeff, "number of element along this axis")
        h["PSFSIZE"] = (self.size, "calexpress: size of pixel images (pixels)")
        return hdu

    @classmethod
    def from_hdu(cls, hdu: fits.BinTableHDU) -> PixelPsf:
        """Read a PSFEx ``PSF_DATA`` table (ours or PSFEx's own ``.psf`` file)."""
        h = hdu.header
        if int(h.get("POLNGRP", 1)) > 1:
            raise ValueError("PSF_DATA with more than one polynomial group is not supported")
        basis = np.asarray(hdu.data["PSF_MASK"][0], dtype=np.float32)
        poldeg = int(h.get("POLDEG1", 0))
        if basis.ndim == 2:
            basis = basis[None]
        samp = float(h["PSF_SAMP"])
        if "PSFSIZE" in h:
            size = int(h["PSFSIZE"])
        else:  # PSFEx: basis extent in pixels
            size = _odd(int(math.ceil(basis.shape[-1] * samp)))
        polzero = (float(h.get("POLZERO1", 1.0)) - 1.0, float(h.get("POLZERO2", 1.0)) - 1.0)
        polscal = (float(h.get("POLSCAL1", 1.0)), float(h.get("POLSCAL2", 1.0)))
        psf = cls(basis, samp, poldeg, polzero, polscal, size)
        psf.n_loaded = int(h.get("LOADED", 0))
        psf.n_accepted = int(h.get("ACCEPTED", 0))
        psf.chi2 = float(h.get("CHI2", float("nan")))
        return psf

    def write_psfex(self, path) -> None:
        """Write a stand-alone PSFEx ``.psf`` file (primary HDU + ``PSF_DATA`` as HDU 1)."""
        fits.HDUList([fits.PrimaryHDU(), self.to_hdu()]).writeto(path, overwrite=True)


def psf_from_hdu(hdu) -> Psf:
    """Read a PSF stored in an exposure file (only `PixelPsf` / ``PSF_DATA`` is persisted)."""
    return PixelPsf.from_hdu(hdu)


def gaussian_psf_to_pixel(psf: GaussianPsf) -> PixelPsf:
    """A `PixelPsf` (degree 0, sampling 1) holding the kernel image of ``psf``, for persistence."""
    kern = psf.compute_kernel_image(0.0, 0.0)
    return PixelPsf(kern[None], 1.0, 0, psf.average_position(), (1.0, 1.0), psf.size)
