"""Illumination correction from flat-fielded sky frames (a smoothed "dark-sky flat").

Twilight or dome flats are lit differently from the night sky (scattered light in the flat, a colour or
pupil difference), so a frame divided by them keeps a smooth large-scale pattern.  The correction is the
ratio of the night sky to the flat, measured on several flat-fielded science frames of different fields:
each frame gets an object mask (sigma-clipped threshold above a local background, faint extended light from
a smoothed copy, grown), its unmasked pixels are summarised by the median of every ``bin_size`` cell
(cells mostly covered by objects are dropped), the frames' cell maps are scaled to one another on the
cells they share and median-combined, cells of one frame that stand out from the others (halos the mask
missed) are rejected and the maps recombined, cells without data are filled from a 2-D polynomial fit,
and the map is lightly smoothed and interpolated to full resolution with a cubic spline.  The result has
median 1; a flat multiplied by it (``make-calibs flat --illum-id``) flattens the night sky (IRAF
``mkillumflat``; LSST's ``illumcor`` dataset plays the same part).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from astropy.io import fits
from calexpress.exposure import Exposure
from calexpress.stats import clipped_stats
from scipy import ndimage

__all__ = ["BAD_PLANES", "cell_medians", "make_illumination_correction", "object_mask"]

#: mask planes whose pixels never enter the illumination statistics
BAD_PLANES = ("BAD", "SAT", "INTRP", "EDGE", "NO_DATA", "VIGNETTED", "UNMASKEDNAN", "CR", "SUSPECT")


def object_mask(
    image: np.ndarray,
    bad: np.ndarray,
    nsigma: float = 2.5,
    grow: int = 5,
    background_cell: int = 16,
    extended_sigma: float = 4.0,
) -> np.ndarray:
    """Pixels covered by stars, galaxies and their faint halos.

    Parameters
    ----------
    image : `numpy.ndarray`
        Flat-fielded image.
    bad : `numpy.ndarray`
        Boolean, pixels to ignore when measuring the noise.
    nsigma : `float`
        Detection threshold in units of the sigma-clipped pixel noise, above a local background (median
        filter of ``background_cell``-binned medians).
    grow : `int`
        Dilation of the detections, pixels.
    extended_sigma : `float`
        Gaussian smoothing (pixels) of the background-subtracted image for faint extended light, which is
        detected at ``nsigma`` times the smoothed noise.

    Returns
    -------
    mask : `numpy.ndarray`
        Boolean, True on objects.
    """
    img = np.where(bad | ~np.isfinite(image), np.nan, image).astype(np.float32)
    _, sigma, _ = clipped_stats(img, ~np.isfinite(img), nsigma=3.0, niter=5)
    ny, nx = img.shape
    c = background_cell
    pad_y, pad_x = (-ny) % c, (-nx) % c
    padded = np.pad(img, ((0, pad_y), (0, pad_x)), constant_values=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (vignetted corners) stay NaN
        cells = np.nanmedian(padded.reshape(padded.shape[0] // c, c, padded.shape[1] // c, c), axis=(1, 3))
    cells = _fill_nearest(cells)
    cells = ndimage.median_filter(cells, size=7, mode="nearest")
    back = ndimage.zoom(cells, c, order=1, mode="nearest")[:ny, :nx]
    resid = np.nan_to_num(img - back, nan=0.0)
    det = resid > nsigma * sigma
    det = ndimage.binary_opening(det)
    smooth_sigma = sigma / (2.0 * np.sqrt(np.pi) * extended_sigma)  # noise of the Gaussian-smoothed image
    det |= ndimage.gaussian_filter(resid, extended_sigma) > nsigma * smooth_sigma
    return ndimage.binary_dilation(det, iterations=grow)


def _fill_nearest(a: np.ndarray, default: float = 1.0) -> np.ndarray:
    """NaN cells take the value of the nearest finite cell (``default`` when there is none)."""
    good = np.isfinite(a)
    if good.all():
        return a
    if not good.any():
        return np.full_like(a, default)
    idx = ndimage.distance_transform_edt(~good, return_distances=False, return_indices=True)
    return a[tuple(idx)]


def cell_medians(
    image: np.ndarray,
    ignore: np.ndarray,
    objects: np.ndarray,
    bin_size: int,
    max_object_fraction: float,
    min_good_fraction: float = 0.5,
) -> np.ndarray:
    """Median of the object-free good pixels of every ``bin_size`` cell (NaN where unusable).

    A cell is unusable when fewer than ``min_good_fraction`` of its pixels are good (not ``ignore``) or
    more than ``max_object_fraction`` of its good pixels are on objects.
    """
    ny, nx = image.shape
    out = np.full((ny // bin_size, nx // bin_size), np.nan)
    for j in range(out.shape[0]):
        for i in range(out.shape[1]):
            sl = np.s_[j * bin_size : (j + 1) * bin_size, i * bin_size : (i + 1) * bin_size]
            good = ~ignore[sl]
            ngood = int(good.sum())
            if ngood < min_good_fraction * bin_size * bin_size:
                continue
            obj = objects[sl] & good
            nobj = int(obj.sum())
            if nobj > max_object_fraction * ngood or nobj == ngood:
                continue
            out[j, i] = np.median(image[sl][good & ~obj])
    return out


def make_illumination_correction(
    exposures: Sequence[Exposure],
    bin_size: int = 32,
    nsigma: float = 2.5,
    grow: int = 5,
    max_object_fraction: float = 0.3,
    crowded_grow: int = 0,
    smoothing: float = 1.0,
    cell_nsigma: float = 3.0,
    cell_iterations: int = 2,
    fill_order: int = 4,
) -> Exposure:
    """Illumination correction (median 1) from flat-fielded sky exposures of different fields.

    Parameters
    ----------
    exposures : sequence of `Exposure`
        Post-ISR frames divided by the flat to be corrected (at least 2; 3 or more recommended, of
        different fields, so that the median rejects objects that escape the mask).
    bin_size : `int`
        Cell size of the binned sky maps, pixels.
    nsigma, grow : `float`, `int`
        Object detection threshold and growth (`object_mask`).
    max_object_fraction : `float`
        Cells with more object pixels than this fraction are dropped.
    crowded_grow : `int`
        ... and so are the cells within this many cells of them (halos of large objects).
    smoothing : `float`
        Gaussian smoothing of the combined cell map, in cells (0: none).
    cell_nsigma, cell_iterations : `float`, `int`
        A frame's cells deviating from the median of all frames by more than ``cell_nsigma`` times that
        frame's robust cell scatter are dropped with their neighbours (``cell_iterations`` passes).
    fill_order : `int`
        Order of the 2-D polynomial fitted to the good cells that fills cells without data.

    Returns
    -------
    illum : `Exposure`
        Full-resolution correction, median 1 over the good cells; ``flat * illum`` is the corrected flat.
        The variance plane holds the variance of the combined cell map, interpolated.
    """
    if len(exposures) < 2:
        raise ValueError(f"illumination correction needs at least 2 sky frames, got {len(exposures)}")
    shape = exposures[0].image.shape
    maps = []
    for exp in exposures:
        if exp.image.shape != shape:
            raise ValueError(f"sky frames differ in shape: {exp.image.shape} vs {shape}")
        ignore = (exp.mask & exp.get_plane_bitmask(*BAD_PLANES)) != 0
        ignore |= ~np.isfinite(exp.image)
        objects = object_mask(exp.image, ignore, nsigma=nsigma, grow=grow)
        cells = cell_medians(exp.image, ignore, objects, bin_size, max_object_fraction)
        if crowded_grow > 0:
            crowded = np.isnan(cells) & ~np.isnan(cell_medians(exp.image, ignore, objects, bin_size, 1.0))
            cells[ndimage.binary_dilation(crowded, iterations=crowded_grow)] = np.nan
        level = np.nanmedian(cells)
        if not (np.isfinite(level) and level > 0):
            raise ValueError("sky frame has no usable positive sky for an illumination correction")
        maps.append(cells / level)
    stack = np.array(maps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells without data in any frame stay NaN
        stack = _rescale(stack)
        for _ in range(cell_iterations):
            # cells of a frame that stand out from the other frames' median (faint halos the object mask
            # missed, scattered light of one frame) are dropped with their neighbours, then recombined
            combined = np.nanmedian(stack, axis=0)
            resid = stack / combined - 1.0
            centre = np.nanmedian(resid, axis=(1, 2), keepdims=True)
            scatter = 1.4826 * np.nanmedian(np.abs(resid - centre), axis=(1, 2), keepdims=True)
            outlier = np.abs(resid - centre) > cell_nsigma * np.maximum(scatter, 1e-4)
            if not outlier.any():
                break
            grown = np.array([ndimage.binary_dilation(o) for o in outlier])
            stack[grown & (_nmaps_finite(stack) > 1)] = np.nan
            stack = _rescale(stack)
        combined = np.nanmedian(stack, axis=0)
        nmap = np.isfinite(stack).sum(axis=0)
        spread = np.nanstd(stack, axis=0) ** 2 / np.maximum(nmap, 1)
    combined = _fill_smooth(combined, fill_order)
    spread = _fill_nearest(np.where(nmap > 1, spread, np.nan), default=0.0)
    if smoothing > 0:
        combined = ndimage.gaussian_filter(combined, smoothing, mode="nearest")
    combined /= np.median(combined)
    image = _upsample(combined, bin_size, shape)
    variance = np.maximum(_upsample(spread, bin_size, shape), 0.0)
    md = fits.Header()
    md["CALIBTYP"] = ("illumcor", "calibration type")
    md["NINPUT"] = (len(exposures), "number of sky frames")
    md["ILLUMBIN"] = (bin_size, "cell size of the correction, pixels")
    md["ILLUMCEL"] = (int((nmap > 0).sum()), "cells measured (the others filled)")
    illum = Exposure(
        image.astype(np.float32),
        None,
        variance.astype(np.float32),
        mask_planes=dict(exposures[0].mask_planes),
        metadata=md,
        detector=exposures[0].detector,
        filter=exposures[0].filter,
    )
    return illum


def _rescale(stack: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Scale every frame's cell map to the median combination on the cells they share.

    Frames lose different cells to objects; normalising each by the median of its own cells would offset
    them from one another by the pattern's mean over the cells they happen to keep.
    """
    for _ in range(iterations):
        combined = np.nanmedian(stack, axis=0)
        scale = np.nanmedian(stack / combined, axis=(1, 2), keepdims=True)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        stack = stack / scale
        if np.all(np.abs(scale - 1.0) < 1e-6):
            break
    return stack


def _fill_smooth(a: np.ndarray, order: int) -> np.ndarray:
    """Cells without data (NaN) get the value of a 2-D polynomial of ``order`` fitted to the others."""
    good = np.isfinite(a)
    if good.all():
        return a
    ny, nx = a.shape
    y, x = np.mgrid[0:ny, 0:nx]
    u, v = 2.0 * x / max(nx - 1, 1) - 1.0, 2.0 * y / max(ny - 1, 1) - 1.0
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    if good.sum() < 2 * len(terms):
        return _fill_nearest(a)
    design = np.stack([u**i * v**j for i, j in terms], axis=-1)
    coeffs, *_ = np.linalg.lstsq(design[good], a[good], rcond=None)
    return np.where(good, a, design @ coeffs)


def _nmaps_finite(stack: np.ndarray) -> np.ndarray:
    """Number of frames with a value in every cell, broadcast to the stack's shape."""
    return np.broadcast_to(np.isfinite(stack).sum(axis=0), stack.shape)


def _upsample(cells: np.ndarray, bin_size: int, shape: tuple[int, int]) -> np.ndarray:
    """Cubic spline through the cell centres, evaluated at every pixel (constant beyond the edges)."""
    from scipy.interpolate import RectBivariateSpline

    ny, nx = shape
    yc = (np.arange(cells.shape[0]) + 0.5) * bin_size - 0.5
    xc = (np.arange(cells.shape[1]) + 0.5) * bin_size - 0.5
    k = min(3, cells.shape[0] - 1, cells.shape[1] - 1)
    spline = RectBivariateSpline(yc, xc, cells, kx=max(k, 1), ky=max(k, 1))
    y = np.clip(np.arange(ny), yc[0], yc[-1])
    x = np.clip(np.arange(nx), xc[0], xc[-1])
    return spline(y, x)
