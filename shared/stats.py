"""Clipped statistics with the semantics of LSST ``afw.math.Statistics``.

``MEANCLIP`` / ``STDEVCLIP`` in afw: iteration 0 clips at ``median +- nsigma * 0.741301109 * IQR``; every
later iteration clips at ``mean +- nsigma * stdev`` of the previous pass; ``niter`` passes in all, and the
result is the mean and (sample, ``n - 1``) standard deviation of the last pass.  Quartiles use linear
interpolation between order statistics (afw's ``percentile``; numpy's ``"linear"`` method).

The kernels are compiled with numba (cached on disk); selection uses quickselect, so each statistic is
O(n) and an 8 Mpix frame takes a few tens of milliseconds.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "IQ_TO_STDEV",
    "clipped_stats",
    "good_values",
    "grid_clipped_stats",
    "iqr",
    "median",
    "percentiles",
    "robust_sigma",
]

#: Ratio of a Gaussian's standard deviation to its inter-quartile range (afw ``IQ_TO_STDEV``).
IQ_TO_STDEV = 0.741301109


def good_values(data: np.ndarray, mask: np.ndarray | None = None, bad_bits: int = 0) -> np.ndarray:
    """Return the finite values of ``data`` not flagged by ``mask`` as a 1-D array.

    Parameters
    ----------
    data : `numpy.ndarray`
        Values (any shape).
    mask : `numpy.ndarray`, optional
        Either an integer bit mask (pixels with ``mask & bad_bits`` set are dropped) or a boolean array
        (``True`` = drop the pixel).  Same shape as ``data``.
    bad_bits : `int`
        Bits of an integer ``mask`` that exclude a pixel.
    """
    data = np.asarray(data)
    keep = np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            keep &= ~mask
        elif bad_bits:
            keep &= (mask & bad_bits) == 0
    return data[keep]


# ----------------------------------------------------------------------------------------------------
# numba kernels


@numba.njit(cache=True, nogil=True)
def _select(a, k, lo, hi):  # pragma: no cover - compiled
    """Partially sort ``a[lo:hi]`` in place so that ``a[k]`` is the k-th smallest (quickselect)."""
    hi -= 1
    while hi > lo:
        mid = (lo + hi) // 2
        # median of three as pivot
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@numba.njit(cache=True, nogil=True)
def _min_from(a, lo, hi):  # pragma: no cover - compiled
    m = a[lo]
    for i in range(lo + 1, hi):
        if a[i] < m:
            m = a[i]
    return m


@numba.njit(cache=True, nogil=True)
def _percentile_inplace(a, n, fraction):  # pragma: no cover - compiled
    """afw ``percentile``: linear interpolation at ``fraction * (n - 1)``; reorders ``a[:n]``."""
    if n == 0:
        return np.nan
    if n == 1:
        return float(a[0])
    idx = fraction * (n - 1)
    q1 = int(idx)
    if q1 >= n - 1:
        _select(a, n - 1, 0, n)
        return float(a[n - 1])
    _select(a, q1, 0, n)
    v1 = float(a[q1])
    v2 = float(_min_from(a, q1 + 1, n))
    return (q1 + 1 - idx) * v1 + (idx - q1) * v2


@numba.njit(cache=True, nogil=True)
def _interp_order_stat(a, lo, hi, idx):  # pragma: no cover - compiled
    """Linear interpolation at fractional rank ``idx`` of ``a``; ``a[lo:hi]`` must contain ranks
    ``int(idx)`` and ``int(idx) + 1`` (it is reordered)."""
    q = int(idx)
    _select(a, q, lo, hi)
    v1 = float(a[q])
    if idx == q or q + 1 >= hi:
        return v1
    v2 = float(_min_from(a, q + 1, hi))
    return (q + 1 - idx) * v1 + (idx - q) * v2


@numba.njit(cache=True, nogil=True)
def _quartiles(a, n):  # pragma: no cover - compiled
    """(q1, median, q3) of ``a[:n]`` with afw/numpy linear interpolation (reorders ``a``)."""
    if n == 0:
        return np.nan, np.nan, np.nan
    if n == 1:
        return float(a[0]), float(a[0]), float(a[0])
    im = 0.5 * (n - 1)
    km = int(im)
    med = _interp_order_stat(a, 0, n, im)
    # now a[:km] <= a[km] <= a[km+1:], so the lower quartile lies in [0, km] and the upper one in [km, n)
    i1 = 0.25 * (n - 1)
    q1 = _interp_order_stat(a, 0, km + 1, i1)
    i3 = 0.75 * (n - 1)
    q3 = _interp_order_stat(a, km, n, i3)
    return q1, med, q3


@numba.njit(cache=True, nogil=True)
def _clip_kernel(buf, n, nsigma, niter):  # pragma: no cover - compiled
    """Clipped mean, variance, count and median of ``buf[:n]`` (reorders ``buf``)."""
    if n == 0:
        return np.nan, np.nan, 0, np.nan
    q1, med, q3 = _quartiles(buf, n)
    center = med
    hwidth = nsigma * IQ_TO_STDEV * (q3 - q1)
    mean = np.nan
    var = np.nan
    cnt = 0
    lo = -np.inf
    hi = np.inf
    noclip = niter <= 0
    if noclip:
        niter = 1
    for it in range(niter):
        if it > 0:
            center = mean
            if cnt > 1:
                hwidth = nsigma * np.sqrt(var)
        if not noclip and hwidth == hwidth:
            lo = center - hwidth
            hi = center + hwidth
        # one pass, sums shifted by the centre for numerical stability
        s1 = 0.0
        s2 = 0.0
        c = 0
        for i in range(n):
            v = buf[i]
            if v >= lo and v <= hi:
                d = v - center
                s1 += d
                s2 += d * d
                c += 1
        if c == 0:
            return np.nan, np.nan, 0, med
        mean = center + s1 / c
        cnt = c
        var = (s2 - s1 * s1 / c) / (c - 1) if c > 1 else np.nan
        if var < 0:
            var = 0.0
    return mean, var, cnt, med


@numba.njit(cache=True, nogil=True)
def _grid_kernel(image, mask, bad_bits, xedges, yedges, nsigma, niter, use_median):  # pragma: no cover
    ny = yedges.shape[0] - 1
    nx = xedges.shape[0] - 1
    value = np.full((ny, nx), np.nan)
    variance = np.full((ny, nx), np.nan)
    npix = np.zeros((ny, nx), dtype=np.int64)
    maxw = 0
    for i in range(nx):
        maxw = max(maxw, xedges[i + 1] - xedges[i])
    maxh = 0
    for j in range(ny):
        maxh = max(maxh, yedges[j + 1] - yedges[j])
    buf = np.empty(maxw * maxh, dtype=image.dtype)
    for j in range(ny):
        for i in range(nx):
            n = 0
            for y in range(yedges[j], yedges[j + 1]):
                for x in range(xedges[i], xedges[i + 1]):
                    v = image[y, x]
                    if (mask[y, x] & bad_bits) == 0 and np.isfinite(v):
                        buf[n] = v
                        n += 1
            if use_median:
                q1, med, q3 = _quartiles(buf, n)
                value[j, i] = med
                sig = IQ_TO_STDEV * (q3 - q1)
                # error of a median: (pi/2) * sigma^2 / n
                variance[j, i] = 0.5 * np.pi * sig * sig / n if n > 0 else np.nan
                npix[j, i] = n
            else:
                mean, var, cnt, med = _clip_kernel(buf, n, nsigma, niter)
                value[j, i] = mean
                variance[j, i] = var / cnt if cnt > 0 else np.nan
                npix[j, i] = cnt
    return value, variance, npix


# ----------------------------------------------------------------------------------------------------
# public API


def _as_float(values: np.ndarray) -> np.ndarray:
    # good_values returns a fresh copy, which the kernels may reorder in place
    if values.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(values)
    return values.astype(np.float64)


def clipped_stats(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    bad_bits: int = 0,
    nsigma: float = 3.0,
    niter: int = 3,
) -> tuple[float, float, int]:
    """afw-style ``MEANCLIP``, ``STDEVCLIP`` and ``NPOINT`` of the good values of ``data``.

    Parameters
    ----------
    data : `numpy.ndarray`
        Values (any shape, any float or int dtype).  NaN and inf are ignored.
    mask : `numpy.ndarray`, optional
        Integer bit mask (with ``bad_bits``) or boolean array (``True`` = ignore), shape of ``data``.
    bad_bits : `int`
        Bits of an integer ``mask`` that exclude a pixel.
    nsigma : `float`
        Clipping half-width in standard deviations.
    niter : `int`
        Number of clipping passes (the first around the median with the IQR-based width).

    Returns
    -------
    mean, stdev : `float`
        Clipped mean and sample standard deviation (NaN when nothing is left).
    n : `int`
        Number of values in the last pass.
    """
    vals = _as_float(good_values(data, mask, bad_bits))
    mean, var, n, _ = _clip_kernel(vals, vals.size, float(nsigma), int(niter))
    return float(mean), float(np.sqrt(var)) if n > 1 else float("nan"), int(n)


def percentiles(
    data: np.ndarray, fractions, mask: np.ndarray | None = None, bad_bits: int = 0
) -> np.ndarray:
    """Percentiles (``fractions`` in [0, 1]) of the good values, afw/numpy ``linear`` interpolation."""
    vals = _as_float(good_values(data, mask, bad_bits))
    return np.array([_percentile_inplace(vals, vals.size, float(f)) for f in np.atleast_1d(fractions)])


def median(data: np.ndarray, mask: np.ndarray | None = None, bad_bits: int = 0) -> float:
    """Median of the good values (NaN if there are none)."""
    return float(percentiles(data, [0.5], mask, bad_bits)[0])


def iqr(data: np.ndarray, mask: np.ndarray | None = None, bad_bits: int = 0) -> float:
    """Inter-quartile range of the good values."""
    q1, q3 = percentiles(data, [0.25, 0.75], mask, bad_bits)
    return float(q3 - q1)


def robust_sigma(data: np.ndarray, mask: np.ndarray | None = None, bad_bits: int = 0) -> float:
    """``0.741301109 * IQR``: the standard deviation of a Gaussian with that IQR."""
    return IQ_TO_STDEV * iqr(data, mask, bad_bits)


def grid_clipped_stats(
    image: np.ndarray,
    mask: np.ndarray | None,
    bad_bits: int,
    xedges: np.ndarray,
    yedges: np.ndarray,
    nsigma: float = 3.0,
    niter: int = 3,
    stat: str = "MEANCLIP",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped statistics of every cell of a grid in one compiled pass.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-D image ``[y, x]``.
    mask : `numpy.ndarray` or None
        Integer mask of the image; pixels with ``mask & bad_bits`` are ignored.
    xedges, yedges : `numpy.ndarray`
        Cell boundaries (``nx + 1`` and ``ny + 1`` integers, increasing; cell ``i`` spans
        ``[xedges[i], xedges[i+1])``).
    stat : `str`
        ``"MEANCLIP"`` (clipped mean; variance = clipped variance / n) or ``"MEDIAN"``
        (variance = pi/2 * sigma_IQR^2 / n).

    Returns
    -------
    value, variance, npix : `numpy.ndarray`
        ``(ny, nx)`` arrays: statistic, its variance (error squared), number of pixels used.
        Cells without good pixels have NaN value and variance and ``npix = 0``.
    """
    stat = stat.upper()
    if stat not in ("MEANCLIP", "MEDIAN", "MEAN"):
        raise ValueError(f"unsupported statistic {stat!r}; use MEANCLIP, MEAN or MEDIAN")
    image = np.asarray(image)
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float32)
    if mask is None:
        mask = np.zeros(image.shape, dtype=np.int32)
        bad_bits = 0
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.int32)
        bad_bits = 1
    if mask.dtype not in (np.int32, np.int64):
        mask = mask.astype(np.int32)
    return _grid_kernel(
        image,
        mask,
        int(bad_bits),
        np.asarray(xedges, dtype=np.int64),
        np.asarray(yedges, dtype=np.int64),
        float(nsigma),
        0 if stat == "MEAN" else int(niter),
        stat == "MEDIAN",
    )
