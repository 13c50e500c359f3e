"""Sky background: binned clipped statistics and a smooth full-resolution model (LSST ``BackgroundMI``).

`estimate_background` follows ``meas_algorithms.SubtractBackgroundTask`` (21.0.0): the image is cut into
``nx = W // bin_size + 1`` by ``ny = H // bin_size + 1`` cells (cell ``i`` ends at
``min(((i + 1) * W + nx // 2) // nx, W)``, centre ``orig + 0.5 * size - 0.5``), each cell gets the clipped
mean (``MEANCLIP``, 3 sigma, 3 iterations) of its unmasked pixels and the variance of that mean, and the
model is either an inverse-variance-weighted 2-D Chebyshev approximation of the cell values (``order = 6``,
triangular, reduced to ``min(nx, ny) - 1`` when undersampled; LSST's ``useApprox=True`` default) or an Akima
spline through the cell centres.

The FITS format of a `BackgroundList` is described in ``docs/formats.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.interpolate import Akima1DInterpolator

from . import fitsio
from .fields import ChebyshevBoundedField
from .geom import Box
from .stats import grid_clipped_stats

__all__ = ["BackgroundComponent", "BackgroundList", "cell_edges", "estimate_background"]

_FORMAT_VERSION = 1
_APPROX = ("chebyshev", "spline", "constant")


def cell_edges(length: int, bin_size: int) -> np.ndarray:
    """LSST cell boundaries along one axis: ``n = length // bin_size + 1`` cells, ``n + 1`` edges."""
    n = max(int(length) // int(bin_size) + 1, 1)
    n = min(n, int(length))
    edges = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        edges[i + 1] = min(((i + 1) * length + n // 2) // n, length)
    return edges


def _centres(edges: np.ndarray) -> np.ndarray:
    size = np.diff(edges)
    return edges[:-1] + 0.5 * size - 0.5


class BackgroundError(ValueError):
    """The background cannot be estimated (e.g. every pixel is masked)."""


@dataclass(eq=False)
class BackgroundComponent:
    """One background model: a grid of cell statistics and how to turn it into an image.

    Attributes
    ----------
    shape : (`int`, `int`)
        ``(height, width)`` of the image the model covers.
    xedges, yedges : `numpy.ndarray`
        Cell boundaries (0-based pixel indices, ``n + 1`` values each).
    values, variances : `numpy.ndarray`
        ``(ny, nx)`` cell statistic and its variance (NaN for cells without good pixels).
    npix : `numpy.ndarray`
        ``(ny, nx)`` pixels used per cell.
    approx : `str`
        ``"chebyshev"`` (weighted 2-D Chebyshev of the cells), ``"spline"`` (Akima spline through the cell
        centres, rows then columns) or ``"constant"`` (the weighted mean of the cells).
    order_x, order_y : `int`
        Chebyshev orders actually used (after undersampling reduction).
    weighting : `bool`
        Inverse-variance weighting of the Chebyshev fit.
    coefficients : `numpy.ndarray` or None
        Chebyshev coefficients ``[iy, ix]`` over the box ``(0, 0, width, height)``.
    stat, nsigma, niter, bin_size :
        How the cells were measured (bookkeeping).
    """

    shape: tuple[int, int]
    xedges: np.ndarray
    yedges: np.ndarray
    values: np.ndarray
    variances: np.ndarray
    npix: np.ndarray
    approx: str = "chebyshev"
    order_x: int = 6
    order_y: int = 6
    weighting: bool = True
    coefficients: np.ndarray | None = None
    stat: str = "MEANCLIP"
    nsigma: float = 3.0
    niter: int = 3
    bin_size: int = 128

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.xedges = np.asarray(self.xedges, dtype=np.int64)
        self.yedges = np.asarray(self.yedges, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        self.variances = np.asarray(self.variances, dtype=np.float64)
        self.npix = np.asarray(self.npix, dtype=np.int64)
        self.approx = self.approx.lower()
        if self.approx not in _APPROX:
            raise ValueError(f"approx must be one of {_APPROX}, got {self.approx!r}")
        if self.approx in ("chebyshev", "constant") and self.coefficients is None:
            self.fit()

    # ------------------------------------------------------------------------------------------------
    @property
    def bbox(self) -> Box:
        return Box(0, 0, self.shape[1], self.shape[0])

    @property
    def x_centres(self) -> np.ndarray:
        return _centres(self.xedges)

    @property
    def y_centres(self) -> np.ndarray:
        return _centres(self.yedges)

    def _good(self) -> np.ndarray:
        return np.isfinite(self.values) & (self.npix > 0)

    def _weights(self, good: np.ndarray) -> np.ndarray | None:
        """``1/sigma`` of the good cells (None = unweighted).  Cells with zero or unknown variance (e.g. a
        noiseless image) get the smallest positive variance; with none positive the fit is unweighted."""
        if not self.weighting:
            return None
        var = self.variances[good]
        positive = np.isfinite(var) & (var > 0)
        if not positive.any():
            return None
        var = np.where(positive, var, var[positive].min())
        return 1.0 / np.sqrt(var)

    def fit(self) -> None:
        """(Re)compute the Chebyshev coefficients from the cell grid."""
        good = self._good()
        if not good.any():
            raise BackgroundError("no cell has usable background statistics (all pixels masked?)")
        yc, xc = np.meshgrid(self.y_centres, self.x_centres, indexing="ij")
        w = self._weights(good)
        if self.approx == "constant":
            wt = (w**2) if w is not None else np.ones(good.sum())
            self.order_x = self.order_y = 0
            self.coefficients = np.array([[np.sum(wt * self.values[good]) / np.sum(wt)]])
            return
        ny, nx = self.values.shape
        ox = min(self.order_x, nx - 1, ny - 1)  # LSST REDUCE_INTERP_ORDER: min(nx, ny) - 1
        oy = min(self.order_y, nx - 1, ny - 1)
        nterm = lambda o: (o + 1) * (o + 2) // 2  # noqa: E731
        while max(ox, oy) > 0 and nterm(max(ox, oy)) > good.sum():
            ox, oy = max(ox - 1, 0), max(oy - 1, 0)
        field_ = ChebyshevBoundedField.fit(
            xc[good], yc[good], self.values[good], self.bbox, ox, oy, triangular=True, weights=w
        )
        self.order_x, self.order_y = ox, oy
        self.coefficients = field_.coefficients

    def get_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Full-resolution model, float32 ``(height, width)``."""
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"background covers {self.shape}, not {tuple(shape)}")
        if self.approx in ("chebyshev", "constant"):
            return ChebyshevBoundedField(self.coefficients, self.bbox).evaluate_image().astype(np.float32)
        return self._spline_image().astype(np.float32)

    def _filled_values(self) -> np.ndarray:
        """Cell values with empty cells filled from the nearest good cells (row, then column, then mean)."""
        vals = self.values.copy()
        good = np.isfinite(vals) & (self.npix > 0)
        if not good.any():
            raise BackgroundError("no cell has usable background statistics (all pixels masked?)")
        if good.all():
            return vals
        xc, yc = self.x_centres, self.y_centres
        for j in range(vals.shape[0]):  # along rows
            g = good[j]
            if g.sum() >= 1 and not g.all():
                vals[j, ~g] = np.interp(xc[~g], xc[g], vals[j, g])
        rows = good.any(axis=1)
        for i in range(vals.shape[1]):  # rows without any good cell: along columns
            if not rows.all():
                vals[~rows, i] = np.interp(yc[~rows], yc[rows], vals[rows, i])
        return vals

    def _spline_image(self) -> np.ndarray:
        vals = self._filled_values()
        h, w = self.shape
        xs, ys = np.arange(w, dtype=float), np.arange(h, dtype=float)
        xc, yc = self.x_centres, self.y_centres

        def interp(centres, data, at, axis):
            n = data.shape[axis]
            if n == 1:
                return np.repeat(data, at.size, axis=axis)
            if n == 2:
                t = (at - centres[0]) / (centres[1] - centres[0])
                a = np.take(data, [0], axis=axis)
                b = np.take(data, [1], axis=axis)
                shape = [1, 1]
                shape[axis] = at.size
                return a + (b - a) * t.reshape(shape)
            return Akima1DInterpolator(centres, data, axis=axis, extrapolate=True)(at)

        rows = interp(xc, vals, xs, axis=1)  # (ny_cells, w)
        return interp(yc, rows, ys, axis=0)  # (h, w)

    def mean(self) -> float:
        """Mean of the model over the image (from a coarse evaluation)."""
        return float(np.mean(self.get_image()))

    # ------------------------------------------------------------------------------------------------
    def to_hdus(self, index: int) -> list[fits.ImageHDU]:
        """FITS extensions of this component (``EXTVER = index``); see ``docs/formats.md``."""
        h = fits.Header()
        h["BKGINDEX"] = (index, "component index (1-based)")
        h["IMWIDTH"] = (self.shape[1], "width of the modelled image (pixels)")
        h["IMHEIGHT"] = (self.shape[0], "height of the modelled image (pixels)")
        h["APPROX"] = (self.approx, "chebyshev | spline | constant")
        h["ORDERX"] = (self.order_x, "Chebyshev order in x (as used)")
        h["ORDERY"] = (self.order_y, "Chebyshev order in y (as used)")
        h["WEIGHTED"] = (bool(self.weighting), "inverse-variance weighted fit")
        h["STAT"] = (self.stat, "cell statistic")
        h["NSIGMA"] = (float(self.nsigma), "clipping threshold (sigma)")
        h["NITER"] = (int(self.niter), "clipping iterations")
        h["BINSIZE"] = (int(self.bin_size), "requested bin size (pixels)")
        hdus = [
            fits.ImageHDU(self.values, h, name="BKG_VALUE", ver=index),
            fits.ImageHDU(self.variances, name="BKG_VAR", ver=index),
            fits.ImageHDU(self.npix, name="BKG_NPIX", ver=index),
            fits.ImageHDU(self.xedges, name="BKG_XEDGE", ver=index),
            fits.ImageHDU(self.yedges, name="BKG_YEDGE", ver=index),
        ]
        if self.coefficients is not None:
            hdus.append(fits.ImageHDU(np.asarray(self.coefficients, float), name="BKG_COEF", ver=index))
        return hdus

    @classmethod
    def from_hdus(cls, hdul: fits.HDUList, index: int, source: Any = "<hdulist>") -> BackgroundComponent:
        """Read component ``index`` from a background file."""
        name = fitsio.source_name(source)

        def get(ext):
            try:
                return hdul[ext, index]
            except KeyError:
                raise fitsio.FitsReadError(name, f"no {ext} extension for component {index}") from None

        val = get("BKG_VALUE")
        h = val.header
        coef = None
        try:
            coef = np.asarray(hdul["BKG_COEF", index].data, dtype=float)
        except KeyError:
            pass
        return cls(
            shape=(int(h["IMHEIGHT"]), int(h["IMWIDTH"])),
            xedges=get("BKG_XEDGE").data,
            yedges=get("BKG_YEDGE").data,
            values=val.data,
            variances=get("BKG_VAR").data,
            npix=get("BKG_NPIX").data,
            approx=str(h.get("APPROX", "chebyshev")),
            order_x=int(h.get("ORDERX", 6)),
            order_y=int(h.get("ORDERY", 6)),
            weighting=bool(h.get("WEIGHTED", True)),
            coefficients=coef,
            stat=str(h.get("STAT", "MEANCLIP")),
            nsigma=float(h.get("NSIGMA", 3.0)),
            niter=int(h.get("NITER", 3)),
            bin_size=int(h.get("BINSIZE", 128)),
        )


class BackgroundList(list):
    """Background components whose full-resolution images add up (LSST ``BackgroundList``)."""

    def get_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Sum of the components' images, float32 (zeros of ``shape`` if the list is empty)."""
        if not self:
            if shape is None:
                raise ValueError("empty BackgroundList: give the image shape")
            return np.zeros(shape, np.float32)
        total = np.zeros(shape if shape is not None else self[0].shape, np.float64)
        for comp in self:
            total += comp.get_image(total.shape)
        return total.astype(np.float32)

    def to_hdulist(self) -> fits.HDUList:
        primary = fits.PrimaryHDU()
        primary.header["BGFORMAT"] = (_FORMAT_VERSION, "calexpress background format version")
        primary.header["NCOMP"] = (len(self), "number of background components")
        hdus: list = [primary]
        for i, comp in enumerate(self, start=1):
            hdus.extend(comp.to_hdus(i))
        return fits.HDUList(hdus)

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList, source: Any = "<hdulist>") -> BackgroundList:
        name = fitsio.source_name(source)
        if "NCOMP" not in hdul[0].header:
            raise fitsio.FitsReadError(name, "not a background file (no NCOMP keyword)")
        n = int(hdul[0].header["NCOMP"])
        return cls(BackgroundComponent.from_hdus(hdul, i, source) for i in range(1, n + 1))

    def write(self, path_or_fileobj: Any) -> None:
        """Write the list as a FITS file (format in ``docs/formats.md``)."""
        fitsio.write_hdulist(self.to_hdulist(), path_or_fileobj)

    @classmethod
    def read(cls, path_or_fileobj: Any) -> BackgroundList:
        """Read a file written by `write`.

        Raises
        ------
        FitsReadError
            Missing, truncated or corrupt file, or not a background file.
        """
        return cls.from_hdulist(fitsio.open_fits(path_or_fileobj), path_or_fileobj)


def estimate_background(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    bad_mask_bits: int = 0,
    bin_size: int = 128,
    stat: str = "MEANCLIP",
    nsigma: float = 3.0,
    niter: int = 3,
    order: int = 6,
    approx: str = "chebyshev",
    weighting: bool = True,
    bin_size_y: int | None = None,
) -> BackgroundComponent:
    """Binned clipped statistics of ``image`` and a smooth model (see module docstring).

    Parameters
    ----------
    image : `numpy.ndarray`
        2-D image ``[y, x]``.
    mask : `numpy.ndarray`, optional
        Integer mask; pixels with any of ``bad_mask_bits`` set are ignored (NaN pixels always are).
    bad_mask_bits : `int`
        LSST ``ignoredPixelMask`` as a bit mask (e.g. BAD | EDGE | DETECTED | DETECTED_NEGATIVE | NO_DATA).
    bin_size : `int`
        Nominal cell size in pixels (``bin_size_y`` for y if given).
    stat : `str`
        ``"MEANCLIP"`` (LSST default), ``"MEAN"`` or ``"MEDIAN"``.
    nsigma, niter : `float`, `int`
        Clipping of ``MEANCLIP``.
    order : `int`
        Chebyshev order (x and y), reduced when there are too few cells.
    approx : `str`
        ``"chebyshev"`` (LSST ``useApprox=True``), ``"spline"`` (Akima through the cell centres) or
        ``"constant"``.
    weighting : `bool`
        Inverse-variance weighting of the Chebyshev fit.

    Returns
    -------
    component : `BackgroundComponent`

    Raises
    ------
    BackgroundError
        If every pixel is masked.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    h, w = image.shape
    xedges = cell_edges(w, bin_size)
    yedges = cell_edges(h, bin_size_y or bin_size)
    values, variances, npix = grid_clipped_stats(
        image, mask, bad_mask_bits, xedges, yedges, nsigma=nsigma, niter=niter, stat=stat
    )
    if not (npix > 0).any():
        raise BackgroundError("All pixels masked: cannot estimate the background")
    return BackgroundComponent(
        shape=(h, w),
        xedges=xedges,
        yedges=yedges,
        values=values,
        variances=variances,
        npix=npix,
        approx=approx,
        order_x=order,
        order_y=order,
        weighting=weighting,
        stat=stat.upper(),
        nsigma=nsigma,
        niter=niter,
        bin_size=bin_size,
    )
