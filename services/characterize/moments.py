"""Adaptive (Gaussian-weighted, elliptical) second moments of small images."""

from __future__ import annotations

import numpy as np

__all__ = ["adaptive_moments"]


def adaptive_moments(
    image: np.ndarray,
    x0: float | None = None,
    y0: float | None = None,
    max_iter: int = 100,
    tol: float = 1e-7,
) -> tuple[float, float, float, float, float]:
    """Return adaptive moments ``(x, y, Ixx, Iyy, Ixy)`` of a (noise-free) image.

    The weight is an elliptical Gaussian whose moments are twice the measured ones
    (so that for a Gaussian image the result equals its moments), iterated to
    convergence like HSM's ``FindAdaptiveMom`` and SdssShape.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-D image, indexed ``[y, x]``.
    x0, y0 : `float`, optional
        Starting centre (default: the image centre).
    max_iter : `int`
        Maximum iterations.
    tol : `float`
        Convergence tolerance on the moments (pixels^2).
    """
    ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    x = (nx - 1) / 2 if x0 is None else float(x0)
    y = (ny - 1) / 2 if y0 is None else float(y0)
    ixx = iyy = 2.0
    ixy = 0.0
    for _ in range(max_iter):
        det = ixx * iyy - ixy * ixy
        if det <= 0:
            break
        dx = xx - x
        dy = yy - y
        # HSM / SdssShape fixed point: weight covariance C, measured weighted moments M, C <- 2 M
        wxx, wyy, wxy = iyy / det, ixx / det, -ixy / det
        w = np.exp(-0.5 * (wxx * dx * dx + wyy * dy * dy + 2 * wxy * dx * dy))
        f = image * w
        s = f.sum()
        if s <= 0:
            break
        mx = (f * dx).sum() / s
        my = (f * dy).sum() / s
        nxx = 2 * (f * dx * dx).sum() / s
        nyy = 2 * (f * dy * dy).sum() / s
        nxy = 2 * (f * dx * dy).sum() / s
        x += mx
        y += my
        if not (np.isfinite(nxx) and nxx > 0 and nyy > 0):
            break
        done = abs(nxx - ixx) < tol and abs(nyy - iyy) < tol and abs(nxy - ixy) < tol
        ixx, iyy, ixy = nxx, nyy, nxy
        if done and abs(mx) < 1e-6 and abs(my) < 1e-6:
            break
    return x, y, ixx, iyy, ixy
