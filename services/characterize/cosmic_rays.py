"""Cosmic-ray detection and repair (after LSST ``RepairTask`` and ``meas_algorithms`` ``CR.cc``).

A pixel is a cosmic-ray candidate (Shimasaku / Lupton SDSS algorithm) when

* (c2) it exceeds the mean of at least one opposite-neighbour pair (E-W, N-S, two diagonals) by
  ``minSigma`` times its noise;
* (c3) it is sharper than the PSF allows: for some direction with PSF ratio
  ``r = P(neighbour) / P(centre)``, ``cond3_fac2 * r * (p - cond3_fac * sigma) > mean_pair +
  cond3_fac * sigma_pair``;
* (c4) it is not BAD/SAT/INTRP/NO_DATA and has no INTRP neighbour.

Candidates are joined into 8-connected groups; (c1) a group is kept if its summed flux above the
background reaches ``min_DN``.  ``niteration`` passes then add neighbouring pixels that exceed the
interpolated estimate by ``minSigma / 2`` sigma (the wings of a track).  Unless ``keepCRs``, the CR
pixels are replaced by a Gaussian-weighted average of the surrounding good pixels and flagged
CR | INTRP.

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


class RepairConfig(Config):
    """RepairTask configuration (LSST names)."""

    doInterpolate = Field(dtype=bool, default=True, doc="Interpolate over defects (if a list is given)")
    doCosmicRay = Field(dtype=bool, default=True, doc="Find and repair cosmic rays")
    cosmicray = ConfigField(dtype=FindCosmicRaysConfig, doc="Cosmic-ray finder")


@numba.njit(cache=True)
def _candidates(
    img, var, badmask, intrp, bkgd, min_sigma, c3fac, thr_h, thr_v, thr_d, out
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
            if p < min_sigma * s:
                continue
            # condition 2: exceed the mean of some opposite pair
            m_h = 0.5 * (img[y, x - 1] + img[y, x + 1]) - bkgd
            m_v = 0.5 * (img[y - 1, x] + img[y + 1, x]) - bkgd
            m_d1 = 0.5 * (img[y - 1, x - 1] + img[y + 1, x + 1]) - bkgd
            m_d2 = 0.5 * (img[y - 1, x + 1] + img[y + 1, x - 1]) - bkgd
            thr = min_sigma * s
            if not (p > m_h + thr or p > m_v + thr or p > m_d1 + thr or p > m_d2 + thr):
                continue
            # condition 3: sharper than the PSF in some direction
            s_h = 0.5 * np.sqrt(max(var[y, x - 1] + var[y, x + 1], 0.0))
            s_v = 0.5 * np.sqrt(max(var[y - 1, x] + var[y + 1, x], 0.0))
            s_d1 = 0.5 * np.sqrt(max(var[y - 1, x - 1] + var[y + 1, x + 1], 0.0))
            s_d2 = 0.5 * np.sqrt(max(var[y - 1, x + 1] + var[y + 1, x - 1], 0.0))
            q = p - c3fac * s
            if not (
                thr_h * q > m_h + c3fac * s_h
                or thr_v * q > m_v + c3fac * s_v
                or thr_d * q > m_d1 + c3fac * s_d1
                or thr_d * q > m_d2 + c3fac * s_d2
            ):
                continue
            # condition 4: no interpolated neighbour
            ok = True
            for dy in range(-1, 2):
                for dx in range(-1, 2):
                    if intrp[y + dy, x + dx]:
                        ok = False
            if ok:
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
        intrp,
        np.float32(background),
        config.minSigma,
        config.cond3_fac,
        f2 * rh,
        f2 * rv,
        f2 * rd,
        cand,
    )
    crmask = np.zeros(img.shape, bool)
    ncr = 0
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
    return Struct(nCr=int(ncr), nPixels=npix, crMask=crmask)


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
