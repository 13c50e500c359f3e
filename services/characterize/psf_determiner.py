"""PSFEx-like PSF determiner: pixel basis on a sub-sampled grid times a spatial polynomial.

The model at detector position ``(x, y)`` is ``sum_k P_k(x, y) B_k`` where the ``B_k`` are images on a
grid of step ``sampling`` image pixels and the ``P_k`` are the PSFEx polynomial terms
``1, x, x^2, y, xy, y^2`` (for order 2) of ``((x - polzero_x) / polscal_x, (y - polzero_y) / polscal_y)``.

Fitting (one linear least-squares problem per basis pixel, solved for all pixels at once):

1. every star stamp is Lanczos-resampled onto the model grid centred on the star's centroid (this
   removes the sub-pixel shift), normalised by the star's flux; pixels near another star (or a given
   neighbour) get zero weight, stars with another source within ``neighbourRejectRadius`` are dropped;
2. each grid pixel is fitted by a weighted polynomial in (x, y) across the stars; with ``pixelWeights``
   each pixel of each star has the weight ``1 / (sigma^2 / flux^2 + (tolerance * model)^2)`` (its own
   inverse variance, the star's Poisson noise included, plus PSFEx's PSF_ACCURACY term), else one weight
   per star ``1 / (1 / SNR^2 + tolerance^2)``; bad pixels (``badMaskBits``) get zero weight;
3. the fluxes are re-estimated as the linear amplitude of the model, pixels deviating by more than
   ``spatialReject`` sigma are dropped, stars whose chi^2 is an outlier are rejected, and the fit
   is repeated.

Measured on the simcamA truth frames (noise-free truth image, the pipeline's stars): T median within
0.04 %, RMS <= 0.15 %, e1/e2 RMS <= 0.0006 at the 25 truth grid positions; with noise the errors are at
the statistical floor of the few (24-56) stars (see ``tests/characterize/test_psf.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from calexpress.config import Config, Field, ListField
from scipy.spatial import cKDTree

from .moments import adaptive_moments
from .resample import lanczos_matrix, resample_stamp

__all__ = [
    "PsfFitResult",
    "PsfexModel",
    "PsfexPsfDeterminerConfig",
    "fit_pixel_psf",
    "poly_terms",
    "validate_model",
]


class PsfexPsfDeterminerConfig(Config):
    """Configuration of the PSFEx-like determiner (names after ``meas_extensions_psfex``)."""

    spatialOrder = Field(dtype=int, default=2, doc="Spatial polynomial order (PSFVAR_DEGREES)")
    sizeCellX = Field(dtype=int, default=256, doc="Kept for LSST compatibility (unused)")
    sizeCellY = Field(dtype=int, default=256, doc="Kept for LSST compatibility (unused)")
    samplingSize = Field(
        dtype=float, default=0.5, doc="Model sampling step in image pixels (PSF_SAMPLING); 0.5..1"
    )
    psfexBasis = Field(
        dtype=str,
        default="PIXEL_AUTO",
        doc="PIXEL_AUTO: use samplingSize only if FWHM < 3 px, else 1; PIXEL: always use it",
    )
    badMaskBits = ListField(dtype=str, default=["INTRP", "SAT"], doc="Mask planes giving zero weight")
    tolerance = Field(
        dtype=float,
        default=1e-3,
        doc="Relative model accuracy (PSFEx PSF_ACCURACY; LSST 1e-2) added to the noise of each pixel. "
        "1e-3 measured best on the simcamA truth frames: larger values cap the weight of the bright "
        "stars (5e-3 caps it at S/N 200), which carry most of the information",
    )
    clipAccuracy = Field(
        dtype=float,
        default=0.02,
        doc="Relative model error added to the pixel noise when clipping pixels and rejecting stars",
    )
    lam = Field(dtype=float, default=0.05, doc="Kept for LSST compatibility (unused)")
    reducedChi2ForPsfCandidates = Field(
        dtype=float, default=2.0, doc="Reject stars whose reduced chi^2 exceeds this times the median"
    )
    spatialReject = Field(dtype=float, default=3.0, doc="Clipping threshold (sigma) for pixels and stars")
    recentroid = Field(dtype=bool, default=False, doc="Kept for LSST compatibility (unused)")
    kernelSize = Field(
        dtype=int,
        default=81,
        doc="Model size in sampled pixels if >= 15 (stamp = int(kernelSize * samplingSize) "
        "image pixels, made odd), else in units of sqrt(median quadrupole)",
    )
    kernelSizeMin = Field(dtype=int, default=25, doc="Minimum stamp size when kernelSize < 15")
    kernelSizeMax = Field(dtype=int, default=45, doc="Maximum stamp size when kernelSize < 15")
    maxClippedFraction = Field(
        dtype=float, default=0.2, doc="Reject a star when more than this fraction of its pixels is clipped"
    )
    nIterForPsf = Field(dtype=int, default=3, doc="Fit / reject iterations")
    lanczosOrder = Field(dtype=int, default=7, doc="Lanczos order used to resample the star stamps")
    minStars = Field(dtype=int, default=3, doc="Fewest stars needed for a fit")
    neighbourMaskRadius = Field(
        dtype=float,
        default=2.0,
        doc="calexpress: stamp pixels within this many FWHM of another source get zero weight (0: off)",
    )
    neighbourRejectRadius = Field(
        dtype=float,
        default=1.5,
        doc="calexpress: stars with another source within this many FWHM are not used",
    )
    pixelWeights = Field(
        dtype=bool,
        default=True,
        doc="Weight every pixel by its own inverse variance (else one weight per star for all its pixels)",
    )


def poly_terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    """PSFEx polynomial terms ``x^i y^j`` (``j`` outer, ``i`` inner, ``i + j <= order``).

    Returns an array of shape ``(nterm, len(u))``.
    """
    u = np.atleast_1d(np.asarray(u, dtype=float))
    v = np.atleast_1d(np.asarray(v, dtype=float))
    terms = []
    for j in range(order + 1):
        for i in range(order + 1 - j):
            terms.append(u**i * v**j)
    return np.array(terms)


@dataclass
class PsfexModel:
    """A fitted PSFEx-like model (evaluation for the determiner's own use and for tests).

    ``basis`` has shape ``(nterm, n, n)``; ``polzero`` is 0-based.
    """

    basis: np.ndarray
    sampling: float
    poldeg: int
    polzero: tuple[float, float]
    polscal: tuple[float, float]
    size: int
    lanczos_order: int = 3
    avg_position: tuple[float, float] = (0.0, 0.0)

    def model_grid(self, x: float, y: float) -> np.ndarray:
        """The model on its sampled grid at ``(x, y)``."""
        p = poly_terms(
            (x - self.polzero[0]) / self.polscal[0], (y - self.polzero[1]) / self.polscal[1], self.poldeg
        )[:, 0]
        return np.tensordot(p, self.basis, axes=1)

    def compute_image(self, x: float, y: float) -> np.ndarray:
        """Unit-sum image of odd size ``size`` centred on pixel ``(round(x), round(y))``, shifted."""
        dx = x - np.floor(x + 0.5)
        dy = y - np.floor(y + 0.5)
        return self._draw(x, y, dx, dy)

    def compute_kernel_image(self, x: float, y: float) -> np.ndarray:
        """Unit-sum image centred on the central pixel."""
        return self._draw(x, y, 0.0, 0.0)

    def _draw(self, x: float, y: float, dx: float, dy: float) -> np.ndarray:
        grid = self.model_grid(x, y)
        n = grid.shape[0]
        c = n // 2
        half = self.size // 2
        offs = np.arange(self.size) - half
        wx = lanczos_matrix((offs - dx) / self.sampling + c, n, self.lanczos_order)
        wy = lanczos_matrix((offs - dy) / self.sampling + c, n, self.lanczos_order)
        img = wy @ grid @ wx.T
        s = img.sum()
        return img / s if s != 0 else img

    def compute_shape(self, x: float, y: float) -> tuple[float, float, float]:
        """Adaptive moments ``(Ixx, Iyy, Ixy)`` of the kernel image."""
        _, _, ixx, iyy, ixy = adaptive_moments(self.compute_kernel_image(x, y))
        return ixx, iyy, ixy

    def determinant_radius(self, x: float | None = None, y: float | None = None) -> float:
        """``(Ixx Iyy - Ixy^2)^(1/4)`` at ``(x, y)`` (default: the average position)."""
        if x is None or y is None:
            x, y = self.avg_position
        ixx, iyy, ixy = self.compute_shape(x, y)
        return float((ixx * iyy - ixy * ixy) ** 0.25)

    def average_position(self) -> tuple[float, float]:
        """Mean position of the stars used."""
        return self.avg_position

    def to_psf(self):
        """Convert to the persistable ``calexpress.psf.PixelPsf``."""
        from calexpress.psf import PixelPsf

        return PixelPsf(
            self.basis.astype(np.float32), self.sampling, self.poldeg, self.polzero, self.polscal, self.size
        )


@dataclass
class PsfFitResult:
    """Result of `fit_pixel_psf`."""

    model: PsfexModel
    used: np.ndarray  # bool per input star: kept in the final fit
    chi2: np.ndarray  # reduced chi^2 per star (nan if not fitted)
    flux: np.ndarray  # fitted flux per star


def _stamp_size(config: PsfexPsfDeterminerConfig, sampling: float, sigma: float) -> int:
    if config.kernelSize >= 15:
        size = int(config.kernelSize * config.samplingSize)
    else:
        size = int(config.kernelSize * sigma)
        size = min(max(size, config.kernelSizeMin), config.kernelSizeMax)
    return size | 1


def fit_pixel_psf(
    image: np.ndarray,
    variance: np.ndarray,
    bad: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    fluxes: np.ndarray | None,
    config: PsfexPsfDeterminerConfig,
    fwhm_guess: float,
    bbox_shape: tuple[int, int] | None = None,
    spatial_order: int | None = None,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> PsfFitResult:
    """Fit a spatially varying pixel-basis PSF to stars.

    Parameters
    ----------
    image, variance : `numpy.ndarray`
        Background-subtracted image and its variance.
    bad : `numpy.ndarray`
        Boolean array, True for pixels that must not be used.
    xs, ys : `numpy.ndarray`
        Star centroids (0-based pixels).
    fluxes : `numpy.ndarray` or `None`
        Starting normalisation of each star (e.g. a 9-px aperture flux); default: stamp sum.
    config : `PsfexPsfDeterminerConfig`
    fwhm_guess : `float`
        FWHM estimate in pixels (chooses the sampling under PIXEL_AUTO).
    bbox_shape : `tuple`, optional
        ``(height, width)`` of the detector, for the polynomial scaling (default: image shape).
    spatial_order : `int`, optional
        Override of ``config.spatialOrder``.
    neighbours : (x, y) arrays, optional
        Positions of the other sources (e.g. the whole catalog); the stars themselves are always
        included.  Stamp pixels within ``neighbourMaskRadius`` FWHM of another source get zero weight,
        and stars with such a source within ``neighbourRejectRadius`` FWHM are not used.

    Raises
    ------
    RuntimeError
        If fewer than ``config.minStars`` usable stars remain.
    """
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    nstar_in = len(xs)
    sampling = config.samplingSize
    if config.psfexBasis == "PIXEL_AUTO" and fwhm_guess >= 3.0:
        sampling = 1.0
    sigma = fwhm_guess / 2.3548
    size = _stamp_size(config, sampling, sigma)
    nmod = int(np.ceil(size / sampling)) | 1
    order = config.lanczosOrder
    badf = bad.astype(np.float32)

    # other sources: positions whose surroundings are masked in every stamp
    nx_, ny_ = xs, ys
    if neighbours is not None:
        nx_ = np.concatenate([xs, np.asarray(neighbours[0], float)])
        ny_ = np.concatenate([ys, np.asarray(neighbours[1], float)])
    okn = np.isfinite(nx_) & np.isfinite(ny_)
    nx_, ny_ = nx_[okn], ny_[okn]
    r_mask = config.neighbourMaskRadius * fwhm_guess
    r_reject = config.neighbourRejectRadius * fwhm_guess
    tree = cKDTree(np.c_[nx_, ny_]) if len(nx_) and r_mask > 0 else None
    reach = (nmod // 2) * sampling * np.sqrt(2) + r_mask

    # 1. resample every star onto the model grid
    data, wts, keep_idx = [], [], []
    for i in range(nstar_in):
        res = resample_stamp(image, xs[i], ys[i], nmod, sampling, order)
        if res is None:
            continue
        stamp, sl, wy, wx = res
        var = np.abs(wy) @ variance[sl] @ np.abs(wx).T
        contaminated = (np.abs(wy) @ badf[sl] @ np.abs(wx).T) > 0
        if tree is not None:
            near = [j for j in tree.query_ball_point([xs[i], ys[i]], reach)]
            dxn = nx_[near] - xs[i]
            dyn = ny_[near] - ys[i]
            other = np.hypot(dxn, dyn) > 1e-3  # not the star itself
            if np.any(np.hypot(dxn, dyn)[other] < r_reject):
                continue
            if other.any():
                # the neighbours' disks in the input pixels, spread by the interpolation kernel (its
                # ringing carries a bright core several pixels along rows and columns)
                yy = np.arange(sl[0].start, sl[0].stop)[:, None]
                xx = np.arange(sl[1].start, sl[1].stop)[None, :]
                disk = np.zeros((len(yy), xx.shape[1]))
                for ox, oy in zip(nx_[near][other], ny_[near][other]):
                    disk[(xx - ox) ** 2 + (yy - oy) ** 2 < r_mask**2] = 1.0
                contaminated |= (np.abs(wy) @ disk @ np.abs(wx).T) > 0.005
        w = np.where(contaminated | ~(var > 0), 0.0, 1.0 / np.where(var > 0, var, 1.0))
        if not np.all(np.isfinite(stamp[w > 0])):
            continue
        data.append(stamp)
        wts.append(w)
        keep_idx.append(i)
    keep_idx = np.array(keep_idx, dtype=int)
    if len(keep_idx) < config.minStars:
        raise RuntimeError(f"only {len(keep_idx)} usable PSF stars (need {config.minStars})")
    d = np.array(data).reshape(len(keep_idx), -1)
    ivar = np.array(wts).reshape(len(keep_idx), -1)

    # initial normalisation: flux within the stamp (or the given one)
    step2 = sampling * sampling
    if fluxes is not None:
        f = np.asarray(fluxes, dtype=float)[keep_idx].copy()
        bad_f = ~(np.isfinite(f) & (f > 0))
        f[bad_f] = d[bad_f].sum(axis=1) * step2
    else:
        f = d.sum(axis=1) * step2
    ok = np.isfinite(f) & (f > 0)

    height, width = bbox_shape if bbox_shape is not None else image.shape
    sx, sy = xs[keep_idx], ys[keep_idx]
    polzero = (0.5 * (sx.min() + sx.max()), 0.5 * (sy.min() + sy.max()))
    polscal = (max(sx.max() - sx.min(), 1.0), max(sy.max() - sy.min(), 1.0))
    poldeg = config.spatialOrder if spatial_order is None else spatial_order
    nterm = (poldeg + 1) * (poldeg + 2) // 2
    if ok.sum() < 3 * nterm:
        poldeg = 1 if ok.sum() >= 6 else 0
        nterm = (poldeg + 1) * (poldeg + 2) // 2
    A = poly_terms((sx - polzero[0]) / polscal[0], (sy - polzero[1]) / polscal[1], poldeg).T  # (ns, nt)

    valid = ivar > 0
    pixmask = valid.copy()
    # starting model (for imputing masked pixels): median normalised stamp
    model = np.broadcast_to(np.median(d[ok] / f[ok, None], axis=0), d.shape)
    chi2 = np.full(len(keep_idx), np.nan)
    for it in range(max(config.nIterForPsf, 1) + 1):
        # star signal-to-noise for the model, and one weight per star (PSFEx's PSF_ACCURACY term):
        # every pixel of the basis is fitted with the same star weights, so that all pixels share
        # one consistent spatial solution; masked or clipped pixels are imputed from the model.
        snr2 = f * f * (ivar * pixmask * model * model).sum(axis=1)
        wstar = 1.0 / (1.0 / np.maximum(snr2, 1e-30) + config.tolerance**2) * ok
        r = np.where(pixmask, d / f[:, None], model)
        if config.pixelWeights:
            coef = _solve_per_pixel(A, r, f, ivar * pixmask, model, wstar, config.tolerance)
        else:
            M = (A * wstar[:, None]).T @ A
            M += np.eye(nterm) * 1e-12 * np.trace(M)
            coef = np.linalg.solve(M, (A * wstar[:, None]).T @ r).T  # (npix, nterm)
        model = A @ coef.T  # (ns, npix), unit-flux units
        # re-estimate fluxes as the model amplitude
        wv = ivar * pixmask
        num = (wv * model * d).sum(axis=1)
        den = (wv * model * model).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            fnew = num / den
        good_f = np.isfinite(fnew) & (fnew > 0)
        f = np.where(good_f, fnew, f)
        ok &= good_f
        # pixel clipping and star rejection
        resid = d - f[:, None] * model
        sig = np.sqrt(
            1.0 / np.where(valid, ivar, np.inf)
            + (config.clipAccuracy * f[:, None] * np.maximum(model, 0)) ** 2
        )
        z = np.where(valid, resid / sig, 0.0)
        nvalid = np.maximum(valid.sum(axis=1), 1)
        chi2 = (z * z * pixmask).sum(axis=1) / np.maximum(pixmask.sum(axis=1), 1)
        if it == config.nIterForPsf:
            break
        pixmask = valid & (np.abs(z) < config.spatialReject * 1.5)
        med = np.median(chi2[ok])
        mad = 1.4826 * np.median(np.abs(chi2[ok] - med))
        lim = max(med + config.spatialReject * mad, config.reducedChi2ForPsfCandidates * max(med, 1.0))
        # too many clipped pixels also means a bad star (blend, CR, ...)
        frac_clip = 1.0 - pixmask.sum(axis=1) / nvalid
        new_ok = ok & (chi2 < lim) & (frac_clip < config.maxClippedFraction)
        if new_ok.sum() >= max(config.minStars, nterm + 1):
            ok = new_ok
        if ok.sum() < config.minStars:
            raise RuntimeError(f"only {ok.sum()} PSF stars left after rejection")

    basis = coef.T.reshape(nterm, nmod, nmod)
    # normalise so that the constant term integrates to one (in image pixels)
    norm = basis[0].sum() * step2
    if norm > 0:
        basis = basis / norm
    used = np.zeros(nstar_in, dtype=bool)
    used[keep_idx[ok]] = True
    chi2_all = np.full(nstar_in, np.nan)
    chi2_all[keep_idx] = chi2
    flux_all = np.full(nstar_in, np.nan)
    flux_all[keep_idx] = f
    avg = (float(np.mean(sx[ok])), float(np.mean(sy[ok])))
    mdl = PsfexModel(
        basis=basis,
        sampling=sampling,
        poldeg=poldeg,
        polzero=polzero,
        polscal=polscal,
        size=size,
        lanczos_order=3,
        avg_position=avg,
    )
    return PsfFitResult(model=mdl, used=used, chi2=chi2_all, flux=flux_all)


def _solve_per_pixel(
    A: np.ndarray,
    r: np.ndarray,
    f: np.ndarray,
    ivar: np.ndarray,
    model: np.ndarray,
    wstar: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Per-pixel weighted polynomial fit (inverse variance of each normalised pixel + model accuracy).

    Masked pixels keep a small weight on their imputed value so that every pixel stays determined.
    Returns ``(npix, nterm)``.
    """
    ok = wstar > 0
    with np.errstate(divide="ignore"):
        var_n = np.where(ivar > 0, 1.0 / (np.maximum(ivar, 1e-300) * f[:, None] ** 2), np.inf)
    w = 1.0 / (var_n + (tolerance * np.maximum(model, 0)) ** 2 + 1e-30)
    finite = np.isfinite(var_n) & ok[:, None]
    floor = 1e-6 * float(np.median(w[finite])) if finite.any() else 1.0
    w = np.where(np.isfinite(var_n), w, floor) * ok[:, None]
    M = np.einsum("sp,st,su->ptu", w, A, A)  # (npix, nterm, nterm)
    tr = np.trace(M, axis1=1, axis2=2)
    M += np.eye(A.shape[1])[None] * (1e-12 * tr + 1e-300)[:, None, None]
    rhs = np.einsum("sp,st,sp->pt", w, A, r)
    return np.linalg.solve(M, rhs[..., None])[..., 0]


def validate_model(
    model, shape: tuple[int, int], t_ref: float, n: int = 5, max_ratio: float = 2.0
) -> str | None:
    """Check the model on an ``n`` x ``n`` grid covering the detector (corners included).

    Returns None if every position gives a valid image whose ``T = Ixx + Iyy`` is within a factor
    ``max_ratio`` of ``t_ref``, else a one-line description of the problem.
    """
    height, width = shape
    for y in np.linspace(0, height - 1, n):
        for x in np.linspace(0, width - 1, n):
            try:
                ixx, iyy, _ = model.compute_shape(float(x), float(y))
            except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
                return f"no valid PSF at ({x:.0f}, {y:.0f}): {exc}"
            t = ixx + iyy
            if not (np.isfinite(t) and t_ref / max_ratio < t < t_ref * max_ratio):
                return f"PSF size T={t:.3g} at ({x:.0f}, {y:.0f}) is far from the stars' {t_ref:.3g}"
    return None
