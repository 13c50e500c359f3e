"""Separable Lanczos resampling of small stamps (PSF candidates and PSF models)."""

from __future__ import annotations

import numpy as np

__all__ = ["lanczos_kernel", "lanczos_matrix", "resample_stamp"]


def lanczos_kernel(t: np.ndarray, order: int = 3) -> np.ndarray:
    """Return the Lanczos kernel ``sinc(t) sinc(t / order)`` (zero for ``|t| >= order``)."""
    t = np.asarray(t, dtype=float)
    out = np.sinc(t) * np.sinc(t / order)
    out[np.abs(t) >= order] = 0.0
    return out


def lanczos_matrix(positions: np.ndarray, n_in: int, order: int = 3, normalize: bool = True) -> np.ndarray:
    """Interpolation weights from a 1-D grid ``0..n_in-1`` to arbitrary ``positions``.

    Parameters
    ----------
    positions : `numpy.ndarray`
        Output positions in input-grid units (input sample ``k`` sits at ``k``).
    n_in : `int`
        Number of input samples.
    order : `int`
        Lanczos order.
    normalize : `bool`
        Normalise each row to unit sum (keeps a flat input flat).

    Returns
    -------
    weights : `numpy.ndarray`
        Matrix of shape ``(len(positions), n_in)``; ``out = weights @ values``.
    """
    positions = np.asarray(positions, dtype=float)
    grid = np.arange(n_in, dtype=float)
    w = lanczos_kernel(positions[:, None] - grid[None, :], order)
    if normalize:
        s = w.sum(axis=1)
        s[s == 0] = 1.0
        w /= s[:, None]
    return w


def resample_stamp(
    image: np.ndarray, xc: float, yc: float, n_out: int, step: float, order: int = 3
) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Sample ``image`` on an ``n_out`` x ``n_out`` grid of spacing ``step`` centred on ``(xc, yc)``.

    Returns ``None`` when the needed pixels run off the image.

    Returns
    -------
    stamp : `numpy.ndarray`
        The resampled values, ``(n_out, n_out)``.
    slices : `tuple` of `slice`
        The image region used (``image[slices]``).
    wy, wx : `numpy.ndarray`
        The interpolation matrices, so that ``stamp = wy @ image[slices] @ wx.T``.
    """
    half = n_out // 2
    u = (np.arange(n_out) - half) * step
    x_lo = int(np.floor(xc + u[0])) - order + 1
    x_hi = int(np.floor(xc + u[-1])) + order + 1
    y_lo = int(np.floor(yc + u[0])) - order + 1
    y_hi = int(np.floor(yc + u[-1])) + order + 1
    ny, nx = image.shape
    if x_lo < 0 or y_lo < 0 or x_hi > nx or y_hi > ny:
        return None
    wx = lanczos_matrix(xc + u - x_lo, x_hi - x_lo, order)
    wy = lanczos_matrix(yc + u - y_lo, y_hi - y_lo, order)
    sl = (slice(y_lo, y_hi), slice(x_lo, x_hi))
    return wy @ image[sl] @ wx.T, sl, wy, wx
