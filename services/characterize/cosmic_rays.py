"""Cosmic-ray detection and repair (after LSST ``RepairTask`` and ``meas_algorithms`` ``CR.cc``).

A pixel is a cosmic-ray candidate (Shimasaku / Lupton SDSS algorithm) when

* (c2) it exceeds the mean of at least one opposite-neighbour pair (E-W, N-S, two diagonals) by
  ``minSigma`` times its noise;
* (c3) it is sharper than the PSF allows: for some direction with PSF ratio
  ``r = P(neighbour) / P(centre)``, ``cond3_fac2 * r * (p - cond3_fac * sigma) > mean_pair +
  cond3_fac * sigma_pair``;
* (c4) it is not BAD/SAT/INTRP/NO_DATA.  Unlike LSST's ``CR.cc``, a pixel next to such pixels is
  still examined, with only its usable neighbours: a pair with one unusable member is replaced by
  the other member alone, whose PSF ratio is taken as ``r**2`` (a star may be centred half a pixel
  away from it; ``P(1.5)/P(0.5) = r**2`` for a Gaussian) and counts only when the pixel is a
  local maximum of its usable neighbours (on a star's wing the neighbour down the slope falls
  faster than any PSF ratio) and the pixel beyond the unusable member is usable and fainter (no star
  hidden behind the bad pixels); otherwise the pair is skipped.  The growth passes then add
  the rest of a track.  So a
  cosmic ray running along an interpolated bad column is still found.

Candidates are joined into 8-connected groups; (c1) a group is kept if its summed flux above the
background reaches ``min_DN``.  ``niteration`` passes then add neighbouring pixels that exceed the
interpolated estimate by ``minSigma / 2`` sigma (the wings of a track).  Unless ``keepCRs``, the CR
pixels are replaced by a Gaussian-weighted average of the surrounding good pixels and flagged
CR | INTRP.  ISR-interpolated (INTRP) row runs whose interpolation used pixels now flagged CR
(``intrpWidth`` pixels on either side) are then interpolated again the way ISR does, from the good
non-CR pixels only, so no cosmic-ray charge survives in interpolated columns.

The candidate search is one numba pass over the image (~40 ms for 2k x 4k); astroscrappy (L.A.Cosmic)
takes 10-30 s on a 4k x 4k frame and is not used.
"""

from __future__ import annotations

import numba
import numpy as np
from calexpress.config import Config, ConfigField, Field
from calexpress.task import Struct, Task, TaskError, timeMethod
from scipy import ndimage

__all__ = ["FindCosmicRaysConfig", "RepairConfig", "RepairTask", "find_cosmic_rays", "interpolate_pixels"]


class FindCosmicRaysConfig(Config):
    """Parameters of the cosmic-ray finder (LSST ``FindCosmicRaysConfig`` names and defaults)."""

    nCrPixelMax = Field(dtype=int, default=10000, doc="Maximum number of CR pixels (else error)")
    minSigma = Field(
        dtype=float, default=6.0, doc="CR pixels must exceed a neighbour pair by this many sigma"
    )
    min_DN = Field(dtype=float, default=150.0, doc="Minimum summed flux of a CR (image units)")
    cond3_fac = Field(dtype=float, default=2.5, doc="Noise fudge factor of condition 3 (sigma)")
    cond3_fac2 = Field(dtype=float, default=0.6, doc="PSF-ratio fudge factor of condition 3")
    niteration = Field(dtype=int, default=3, doc="Passes growing CRs into their neighbours")
    keepCRs = Field(dtype=bool, default=False, doc="Keep the CR pixel values (only set the mask)")
    interpSigma = Field(dtype=float, default=1.5, doc="Gaussian sigma (pixels) of the replacement average")
    intrpWidth = Field(
        dtype=int,
        default=2,
        doc="calexpress: ISR interpolationWidth; INTRP row runs with a CR pixel among the this many "
        "pixels on either side are re-interpolated from the good non-CR pixels (0: never)",
    )
    intrpReach = Field(
        dtype=int, default=8, doc="calexpress: at most this many pixels walked past CR pixels for that"
    )


class RepairConfig(Config):
    """RepairTask configuration (LSST names)."""

    doInterpolate = Field(dtype=bool, default=True, doc="Interpolate over defects (if a list is given)")
    doCosmicRay = Field(dtype=bool, default=True, doc="Find and repair cosmic rays")
    cosmicray = ConfigField(dtype=FindCosmicRaysConfig, doc="Cosmic-ray finder")


@numba.njit(cache=True, inline="always")
def _pair(img, var, badmask, y, x, dy, dx, bkgd):  # pragma: no cover - compiled
    """Mean (above ``bkgd``) and its sigma of the usable members of the pair ``(y, x) -/+ (dy, dx)``.

    Returns ``(mean, sigma, n_usable)``."""
    ya, xa, yb, xb = y - dy, x - dx, y + dy, x + dx
    a = not badmask[ya, xa]
    b = not badmask[yb, xb]
    if a and b:
        return (
            0.5 * (img[ya, xa] + img[yb, xb]) - bkgd,
            0.5 * np.sqrt(max(var[ya, xa] + var[yb, xb], 0.0)),
            2,
        )
    # one usable member: the pixel beyond the unusable one must be usable and fainter than the
    # centre (else a star may lie behind the bad pixels); then the usable member alone is the estimate
    ny, nx = img.shape
    if a:
        yc, xc = y + 2 * dy, x + 2 * dx
    elif b:
        yc, xc = y - 2 * dy, x - 2 * dx
    else:
        return 0.0, 0.0, 0
    if yc < 0 or yc >= ny or xc < 0 or xc >= nx or badmask[yc, xc] or img[yc, xc] >= img[y, x]:
        return 0.0, 0.0, 0
    if a:
        return img[ya, xa] - bkgd, np.sqrt(max(var[ya, xa], 0.0)), 1
    return img[yb, xb] - bkgd, np.sqrt(max(var[yb, xb], 0.0)), 1


@numba.njit(cache=True, inline="always")
def _sharp(p, q, thr, m, sm, n, thr2, thr1, c3fac, is_max):  # pragma: no cover - compiled
    """Conditions 2 and 3 for one direction (``n`` usable neighbours: ratio ``thr2`` or ``thr1``).

    A one-sided direction counts only at a local maximum (``is_max``): on a star's wing the
    neighbour down the slope falls faster than any PSF ratio allows."""
    if n == 0 or (n == 1 and not is_max):
        return False, False
    c2 = p > m + thr
    c3 = (thr2 if n == 2 else thr1) * q > m + c3fac * sm
    return c2, c3


@numba.njit(cache=True)
def _candidates(
    img, var, badmask, bkgd, min_sigma, c3fac, thr_h, thr_v, thr_d, thr1_h, thr1_v, thr1_d, out
):  # pragma: no cover
    ny, nx = img.shape
    for y in range(1, ny - 1):
        for x in range(1, nx - 1):
            if badmask[y, x]:
                continue
            p = img[y, x] - bkgd
            v = var[y, x]
            if not (v > 0):
                continue
            s = np.sqrt(v)
            thr = min_sigma * s
            if p < thr:
                continue
            q = p - c3fac * s
            is_max = True
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    if not badmask[y + dy, x + dx] and img[y + dy, x + dx] - bkgd > p:
                        is_max = False
            m, sm, n = _pair(img, var, badmask, y, x, 0, 1, bkgd)
            c2h, c3h = _sharp(p, q, thr, m, sm, n, thr_h, thr1_h, c3fac, is_max)
            m, sm, n = _pair(img, var, badmask, y, x, 1, 0, bkgd)
            c2v, c3v = _sharp(p, q, thr, m, sm, n, thr_v, thr1_v, c3fac, is_max)
            m, sm, n = _pair(img, var, badmask, y, x, 1, 1, bkgd)
            c2a, c3a = _sharp(p, q, thr, m, sm, n, thr_d, thr1_d, c3fac, is_max)
            m, sm, n = _pair(img, var, badmask, y, x, 1, -1, bkgd)
            c2b, c3b = _sharp(p, q, thr, m, sm, n, thr_d, thr1_d, c3fac, is_max)
            if (c2h or c2v or c2a or c2b) and (c3h or c3v or c3a or c3b):
                out[y, x] = True


def _psf_ratios(psf, position: tuple[float, float]) -> tuple[float, float, float]:
    kern = psf.compute_kernel_image(*position)
    c = kern.shape[0] // 2
    p0 = kern[c, c]
    h = 0.5 * (kern[c, c - 1] + kern[c, c + 1]) / p0
    v = 0.5 * (kern[c - 1, c] + kern[c + 1, c]) / p0
    d = 0.25 * (kern[c - 1, c - 1] + kern[c + 1, c + 1] + kern[c - 1, c + 1] + kern[c + 1, c - 1]) / p0
    return float(h), float(v), float(d)


@numba.njit(cache=True)
def _fill(img, excl, ys, xs, sigma, rmax):  # pragma: no cover - compiled
    ny, nx = img.shape
    out = np.empty(len(ys), np.float32)
    for k in range(len(ys)):
        y0 = ys[k]
        x0 = xs[k]
        s = sigma
        r = int(3 * s + 1)
        val = np.nan
        while True:
            num = 0.0
            den = 0.0
            for y in range(max(y0 - r, 0), min(y0 + r + 1, ny)):
                for x in range(max(x0 - r, 0), min(x0 + r + 1, nx)):
                    if not excl[y, x]:
                        w = np.exp(-0.5 * ((y - y0) ** 2 + (x - x0) ** 2) / (s * s))
                        num += w * img[y, x]
                        den += w
            if den > 1e-3:
                val = num / den
                break
            if r >= rmax:
                break
            s *= 2
            r = int(3 * s + 1)
        out[k] = val if den > 0 else 0.0
    return out


def interpolate_pixels(
    image: np.ndarray, bad: np.ndarray, good: np.ndarray, sigma: float = 1.5, rmax: int = 64
) -> np.ndarray:
    """Estimates at the ``bad`` pixels: Gaussian-weighted mean of the ``good`` pixels around each.

    The Gaussian (``sigma`` pixels) is widened by 2x until it reaches good pixels (at most ``rmax``).
    Returns the estimates in the order of ``np.nonzero(bad)``.
    """
    ys, xs = np.nonzero(bad)
    excl = np.ascontiguousarray(bad | ~good)
    return _fill(
        np.ascontiguousarray(image, dtype=np.float32),
        excl,
        ys.astype(np.int64),
        xs.astype(np.int64),
        float(sigma),
        int(rmax),
    )


@numba.njit(cache=True)
def _side_mean(image, badmask, crmask, y, x0, step, width, reach):  # pragma: no cover - compiled
    """Mean of up to ``width`` usable pixels walking from ``x0`` by ``step``; CR pixels are skipped."""
    nx = image.shape[1]
    tot = 0.0
    n = 0
    x = x0
    while 0 <= x < nx and n < width and abs(x - x0) < reach and not badmask[y, x]:
        if not crmask[y, x]:
            v = image[y, x]
            if v == v:
                tot += v
                n += 1
        x += step
    return tot, n


@numba.njit(cache=True)
def _reinterpolate_rows(image, intrp, badmask, crmask, rows, width, reach):  # pragma: no cover
    """Redo ISR's row interpolation of INTRP runs that used CR pixels, from the good non-CR pixels.

    For each row in ``rows``, an INTRP run whose ``width`` pixels on either side (ISR's
    ``interpolationWidth``) hold a CR pixel is bridged linearly between the means of up to ``width``
    good, non-CR pixels on each side (walking at most ``reach`` pixels past CR pixels), as
    `calexpress.isr.isrFunctions.interpolate_over_mask` does.  Returns the number of pixels redone.
    """
    nx = image.shape[1]
    nre = 0
    for k in range(len(rows)):
        y = rows[k]
        x = 0
        while x < nx:
            if not intrp[y, x]:
                x += 1
                continue
            x1 = x
            while x1 < nx and intrp[y, x1]:
                x1 += 1
            hit = False
            for xx in range(max(x - width, 0), x):
                hit = hit or crmask[y, xx]
            for xx in range(x1, min(x1 + width, nx)):
                hit = hit or crmask[y, xx]
            if hit:
                left, nl = _side_mean(image, badmask, crmask, y, x - 1, -1, width, reach)
                right, nr = _side_mean(image, badmask, crmask, y, x1, 1, width, reach)
                if nl > 0:
                    left /= nl
                if nr > 0:
                    right /= nr
                for xx in range(x, x1):
                    if nl > 0 and nr > 0:
                        t = (xx - x + 1.0) / (x1 - x + 1.0)
                        image[y, xx] = left + (right - left) * t
                        nre += 1
                    elif nl > 0 or nr > 0:
                        image[y, xx] = left if nl > 0 else right
                        nre += 1
            x = x1
    return nre


_DY = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
_DX = np.array([-1, 0, 1, -1, 1, -1, 0, 1])


def find_cosmic_rays(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    mask_planes: dict[str, int],
    psf,
    config: FindCosmicRaysConfig,
    background: float = 0.0,
    keep_crs: bool | None = None,
) -> Struct:
    """Find cosmic rays, set the CR mask bit and (unless ``keep_crs``) interpolate over them.

    Parameters
    ----------
    image, variance, mask : `numpy.ndarray`
        Modified in place (mask always, image unless ``keep_crs``).
    mask_planes : `dict`
        Plane name to bit (must contain CR and INTRP).
    psf : `calexpress.psf.Psf`
        PSF used for the sharpness test (at its average position).
    config : `FindCosmicRaysConfig`
    background : `float`
        Background level of the image (median).
    keep_crs : `bool`, optional
        Override ``config.keepCRs``.

    Returns
    -------
    `Struct` with ``nCr`` (number of CRs), ``nPixels``, ``crMask`` (bool array).

    Raises
    ------
    TaskError
        If more than ``config.nCrPixelMax`` CR pixels are found.
    """
    keep = config.keepCRs if keep_crs is None else keep_crs
    bit = {k: 1 << v for k, v in mask_planes.items()}
    badbits = bit.get("BAD", 0) | bit.get("SAT", 0) | bit.get("INTRP", 0) | bit.get("NO_DATA", 0)
    badmask = (mask & badbits) != 0
    intrp = (mask & bit.get("INTRP", 0)) != 0
    img = np.ascontiguousarray(image, dtype=np.float32)
    var = np.ascontiguousarray(variance, dtype=np.float32)
    rh, rv, rd = _psf_ratios(psf, psf.average_position())
    cand = np.zeros(img.shape, np.bool_)
    f2 = config.cond3_fac2
    _candidates(
        img,
        var,
        badmask,
        np.float32(background),
        config.minSigma,
        config.cond3_fac,
        f2 * rh,
        f2 * rv,
        f2 * rd,
        # one usable neighbour: the star may be centred half a pixel away from it, so its ratio
        # to the centre pixel can be as low as P(1.5)/P(0.5) = r**2 for a Gaussian
        f2 * rh * rh,
        f2 * rv * rv,
        f2 * rd * rd,
        cand,
    )
    crmask = np.zeros(img.shape, bool)
    ncr = nre = 0
    ys, xs = np.nonzero(cand)
    if len(ys):
        labels, n = ndimage.label(cand, structure=np.ones((3, 3), bool))
        lab = labels[ys, xs]
        sums = np.bincount(lab, weights=img[ys, xs] - np.float32(background), minlength=n + 1)
        sel = sums[lab] >= config.min_DN
        ys, xs = ys[sel], xs[sel]
        crmask[ys, xs] = True
        # grow into the neighbours (track wings) at minSigma / 2 against the interpolated estimate
        excl = badmask | crmask  # pixels not usable for the estimate
        ny, nx = img.shape
        for _ in range(config.niteration):
            ry = (ys[:, None] + _DY[None, :]).ravel()
            rx = (xs[:, None] + _DX[None, :]).ravel()
            inside = (ry >= 0) & (ry < ny) & (rx >= 0) & (rx < nx)
            ry, rx = ry[inside], rx[inside]
            new = ~excl[ry, rx]
            ry, rx = ry[new], rx[new]
            if len(ry) == 0:
                break
            flat = np.unique(ry * nx + rx)
            ry, rx = flat // nx, flat % nx
            excl[ry, rx] = True
            est = _fill(img, excl, ry, rx, float(config.interpSigma), 64)
            sig = np.sqrt(np.maximum(var[ry, rx], 0))
            add = img[ry, rx] - est > 0.5 * config.minSigma * sig
            excl[ry[~add], rx[~add]] = badmask[ry[~add], rx[~add]]
            if not add.any():
                break
            ys, xs = ry[add], rx[add]
            crmask[ys, xs] = True
        ncr = int(ndimage.label(crmask, structure=np.ones((3, 3), bool))[1])
    npix = int(crmask.sum())
    if npix > config.nCrPixelMax:
        raise TaskError(f"Too many CR pixels ({npix} > nCrPixelMax={config.nCrPixelMax})")
    mask &= np.int32(~bit.get("CR", 0))
    if npix:
        cy, cx = np.nonzero(crmask)
        mask[cy, cx] |= np.int32(bit["CR"])
        if not keep:
            excl = badmask | crmask
            image[cy, cx] = _fill(img, excl, cy, cx, float(config.interpSigma), 64)
            mask[cy, cx] |= np.int32(bit["INTRP"])
            if config.intrpWidth > 0 and intrp.any():
                rows = np.unique(cy).astype(np.int64)
                nre = _reinterpolate_rows(
                    img, intrp, badmask, crmask, rows, int(config.intrpWidth), int(config.intrpReach)
                )
                if img is not image:
                    image[intrp] = img[intrp]
    return Struct(nCr=int(ncr), nPixels=npix, crMask=crmask, nIntrpRepaired=int(nre))


class RepairTask(Task):
    """Repair cosmic rays (LSST ``RepairTask``; defects are interpolated by ISR in calexpress)."""

    ConfigClass = RepairConfig
    _DefaultName = "repair"

    @timeMethod
    def run(self, exposure, defects=None, keepCRs: bool | None = None) -> Struct:
        """Find (and unless ``keepCRs``, interpolate) cosmic rays in ``exposure`` in place.

        Returns a `Struct` with ``nCr`` and ``nPixels``.
        """
        if exposure.psf is None:
            raise TaskError("RepairTask needs a PSF on the exposure")
        res = Struct(nCr=0, nPixels=0, crMask=None)
        if self.config.doCosmicRay:
            exposure.add_mask_plane("CR")
            exposure.add_mask_plane("INTRP")
            img = exposure.image
            sub = img[::4, ::4]
            bkgd = float(np.nanmedian(sub))
            res = find_cosmic_rays(
                img,
                exposure.variance,
                exposure.mask,
                exposure.mask_planes,
                exposure.psf,
                self.config.cosmicray,
                background=bkgd,
                keep_crs=keepCRs,
            )
            self.log.info("Identified %d cosmic rays (%d pixels).", res.nCr, res.nPixels)
            self.metadata["numCosmicRays"] = res.nCr
            self.metadata["numCosmicRayPixels"] = res.nPixels
        return res
