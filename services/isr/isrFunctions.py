"""ISR building blocks on numpy arrays: crosstalk, assembly, saturation trails, interpolation, masks.

Hot loops are compiled with numba (cached on disk) and work in place on float32 images and int32 masks.
"""

from __future__ import annotations

import numba
import numpy as np
from calexpress.geom import Box

__all__ = [
    "assemble",
    "crosstalk_correct",
    "grow_mask_cross",
    "interpolate_over_mask",
    "polygon_mask",
    "widen_saturation_trails",
]


# --------------------------------------------------------------------------------------------------
# crosstalk


@numba.njit(cache=True, nogil=True)
def _xtalk_kernel(image, y0s, x0s, steps, coeffs, ny, nx):  # pragma: no cover - compiled
    namp = y0s.size
    src = np.empty(namp, dtype=np.float32)
    for r in range(ny):
        for c in range(nx):
            for a in range(namp):
                src[a] = image[y0s[a] + r, x0s[a] + c * steps[a]]
            for v in range(namp):
                corr = 0.0
                for s in range(namp):
                    corr += coeffs[v, s] * src[s]
                if corr != 0.0:
                    image[y0s[v] + r, x0s[v] + c * steps[v]] -= corr


def crosstalk_correct(
    image: np.ndarray, boxes: list[Box], coeffs: np.ndarray, flips: list[bool] | None = None
) -> None:
    """Remove crosstalk in place: ``victim -= sum_source coeffs[victim, source] * source``.

    Parameters
    ----------
    image : `numpy.ndarray`
        float32 image holding every amplifier's data (overscan-subtracted).
    boxes : `list` [`Box`]
        Data box of each amplifier in ``image``, in the order of ``coeffs``; all the same size.
    coeffs : `numpy.ndarray`
        ``(namp, namp)`` matrix ``[victim, source]`` (diagonal ignored).
    flips : `list` [`bool`], optional
        True where an amplifier's columns run right-to-left in readout order within ``image`` (e.g. an
        x-flipped amplifier after assembly).  Readout coordinates are the same (row, column) for all amps.
    """
    if not boxes:
        return
    shape = boxes[0].shape
    if any(b.shape != shape for b in boxes):
        raise ValueError("crosstalk needs amplifiers of equal size")
    flips = flips or [False] * len(boxes)
    c = np.array(coeffs, dtype=np.float64)
    np.fill_diagonal(c, 0.0)
    y0s = np.array([b.y0 for b in boxes], dtype=np.int64)
    x0s = np.array([b.x1 - 1 if f else b.x0 for b, f in zip(boxes, flips)], dtype=np.int64)
    steps = np.array([-1 if f else 1 for f in flips], dtype=np.int64)
    _xtalk_kernel(image, y0s, x0s, steps, c, shape[0], shape[1])


# --------------------------------------------------------------------------------------------------
# assembly


def assemble(raw: np.ndarray, detector, out: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Trim and place every amplifier's raw data box into the detector frame (flips applied).

    Parameters
    ----------
    raw : `numpy.ndarray`
        Untrimmed raw frame.
    detector : `calexpress.camera.Detector`
        Geometry.
    out : `numpy.ndarray`, optional
        Output array of ``detector.bbox.shape`` (allocated if None).
    """
    if out is None:
        out = np.empty(detector.bbox.shape, dtype=dtype)
    for amp in detector.amplifiers:
        out[amp.bbox.slices] = amp.data_to_assembled(raw[amp.raw_data_bbox.slices])
    return out


# --------------------------------------------------------------------------------------------------
# saturation trails and mask growth


@numba.njit(cache=True, nogil=True)
def _widen_kernel(mask, bit):  # pragma: no cover - compiled
    ny, nx = mask.shape
    row = np.empty(nx, dtype=np.bool_)
    for y in range(ny):
        any_set = False
        for x in range(nx):
            v = (mask[y, x] & bit) != 0
            row[x] = v
            any_set |= v
        if not any_set:
            continue
        x = 0
        while x < nx:
            if not row[x]:
                x += 1
                continue
            x1 = x
            while x1 < nx and row[x1]:
                x1 += 1
            w = x1 - x
            if w <= 5:
                extra = 0
            elif w <= 7:
                extra = 1
            elif w <= 9:
                extra = 3
            else:
                extra = 4
            for xx in range(max(0, x - extra), min(nx, x1 + extra)):
                mask[y, xx] |= bit
            x = x1


def widen_saturation_trails(mask: np.ndarray, bit: int) -> None:
    """Widen every horizontal run of ``bit`` as LSST does: by 0 (w <= 5), 1 (6-7), 3 (8-9), 4 (>= 10)."""
    _widen_kernel(mask, np.int32(bit))


@numba.njit(cache=True, nogil=True)
def _grow_cross_kernel(mask, bit, out_bit):  # pragma: no cover - compiled
    ny, nx = mask.shape
    for y in range(ny):
        for x in range(nx):
            if mask[y, x] & bit:
                if x > 0:
                    mask[y, x - 1] |= out_bit
                if x < nx - 1:
                    mask[y, x + 1] |= out_bit
                if y > 0:
                    mask[y - 1, x] |= out_bit
                if y < ny - 1:
                    mask[y + 1, x] |= out_bit
                mask[y, x] |= out_bit


def grow_mask_cross(mask: np.ndarray, bit: int, radius: int = 1) -> None:
    """Grow the pixels with ``bit`` by ``radius`` pixels (4-connected steps, like afw's isotropic grow)."""
    if radius <= 0:
        return
    tmp_bit = 1 << 30
    for _ in range(radius):
        _grow_cross_kernel(mask, np.int32(bit), np.int32(tmp_bit))
        sel = (mask & tmp_bit) != 0
        mask[sel] |= bit
        mask[sel] &= ~tmp_bit


# --------------------------------------------------------------------------------------------------
# interpolation


@numba.njit(cache=True, nogil=True)
def _interp_kernel(image, mask, bad_bits, intrp_bit, fallback, width):  # pragma: no cover - compiled
    ny, nx = image.shape
    n = 0
    for y in range(ny):
        x = 0
        while x < nx:
            if (mask[y, x] & bad_bits) == 0:
                x += 1
                continue
            x1 = x
            while x1 < nx and (mask[y, x1] & bad_bits) != 0:
                x1 += 1
            # mean of up to `width` good pixels on each side
            left = 0.0
            nl = 0
            xx = x - 1
            while xx >= 0 and nl < width and (mask[y, xx] & bad_bits) == 0:
                v = image[y, xx]
                if v == v:
                    left += v
                    nl += 1
                xx -= 1
            right = 0.0
            nr = 0
            xx = x1
            while xx < nx and nr < width and (mask[y, xx] & bad_bits) == 0:
                v = image[y, xx]
                if v == v:
                    right += v
                    nr += 1
                xx += 1
            if nl > 0:
                left /= nl
            if nr > 0:
                right /= nr
            for xx in range(x, x1):
                if nl > 0 and nr > 0:
                    # linear between the side means, placed at the run's edges
                    t = (xx - x + 1.0) / (x1 - x + 1.0)
                    image[y, xx] = left + (right - left) * t
                elif nl > 0 or nr > 0:
                    image[y, xx] = left if nl > 0 else right
                else:
                    image[y, xx] = fallback
                mask[y, xx] |= intrp_bit
                n += 1
            x = x1
    return n


def interpolate_over_mask(
    image: np.ndarray, mask: np.ndarray, bad_bits: int, intrp_bit: int, fallback: float, width: int = 2
) -> int:
    """Replace masked pixels by linear interpolation along rows; set ``intrp_bit`` on them.

    Each run of pixels with any of ``bad_bits`` is bridged linearly between the means of up to
    ``width`` good pixels on either side; a run touching the edge takes the one side's mean; a row with
    no good pixel takes ``fallback``.  Returns the number of pixels interpolated.
    """
    return int(
        _interp_kernel(image, mask, np.int32(bad_bits), np.int32(intrp_bit), np.float32(fallback), int(width))
    )


# --------------------------------------------------------------------------------------------------
# polygons


def polygon_mask(shape: tuple[int, int], polygon: list[tuple[float, float]]) -> np.ndarray:
    """Boolean mask of pixel centres inside (or on) a polygon given as (x, y) vertices."""
    poly = np.asarray(polygon, dtype=float)
    ny, nx = shape
    x0 = max(int(np.floor(poly[:, 0].min())), 0)
    x1 = min(int(np.ceil(poly[:, 0].max())) + 1, nx)
    y0 = max(int(np.floor(poly[:, 1].min())), 0)
    y1 = min(int(np.ceil(poly[:, 1].max())) + 1, ny)
    out = np.zeros(shape, dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    inside = np.zeros(yy.shape, dtype=bool)
    n = len(poly)
    for i in range(n):  # even-odd rule
        xa, ya = poly[i]
        xb, yb = poly[(i + 1) % n]
        cond = (ya > yy) != (yb > yy)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = xa + (yy - ya) * (xb - xa) / (yb - ya)
        inside ^= cond & (xx < xint)
    # include pixels on the edges (distance < 1e-9 to a segment)
    for i in range(n):
        xa, ya = poly[i]
        xb, yb = poly[(i + 1) % n]
        cross = (xb - xa) * (yy - ya) - (yb - ya) * (xx - xa)
        within = ((xx - xa) * (xx - xb) <= 1e-9) & ((yy - ya) * (yy - yb) <= 1e-9)
        inside |= (np.abs(cross) < 1e-9) & within
    out[y0:y1, x0:x1] = inside
    return out
