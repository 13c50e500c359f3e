"""Source detection on a PSF-smoothed image (after LSST ``SourceDetectionTask``).

Algorithm (``lsst_processccd.md`` section 2.4):

1. clear DETECTED / DETECTED_NEGATIVE;
2. ``sigma`` = PSF determinant radius; smoothing kernel width
   ``(int(sigma * nSigmaForKernel + 0.5) // 2) * 2 + 1``;
3. separable normalised Gaussian convolution of the image (``scipy.ndimage.correlate1d``);
4. pixels closer to the border than half the kernel (the invalid part of the convolution) get EDGE;
5. threshold = ``thresholdValue * STDEVCLIP(smoothed middle, excluding statsMask)`` for
   ``thresholdType="stdev"``,
   so "5 sigma" is in units of the *smoothed* image's noise as in LSST;
6. 8-connected components of ``smoothed >= threshold`` (``scipy.ndimage.label``), ``minPixels``;
   a footprint is kept only if its highest peak reaches ``includeThresholdMultiplier * threshold``;
   peaks = pixels of the smoothed image with no strictly larger 8-neighbour, brightest first;
7. footprints grown by ``int(nSigmaToGrow * sigma + 0.5)`` (disc if ``isotropicGrow``, else the Manhattan
   stencil), touching footprints merged; with ``doMergeSaturatedPeaks`` the peaks within
   ``saturatedPeakRadius`` PSF sigma of a saturated region become one peak at its core (the saturated
   plateau, its ring and its trails make spurious maxima, which the deblender would otherwise split into
   children 5-10 px off the star); DETECTED (and DETECTED_NEGATIVE) set;
8. ``reEstimateBackground``: the background is re-estimated on the unsmoothed image ignoring detected pixels
   (``calexpress.background.estimate_background``), subtracted, and returned.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from astropy import units as u
from astropy.table import Column, Table
from scipy import ndimage

from .config import ChoiceField, Config, Field, ListField
from .footprints import FootprintSet, merge_saturated_peaks
from .stats import clipped_stats
from .task import ExposureIdInfo, Struct, Task, TaskError, timeMethod

__all__ = [
    "SourceDetectionConfig",
    "SourceDetectionTask",
    "gaussian_kernel_1d",
    "make_source_catalog",
    "smooth_image",
]


class SourceDetectionConfig(Config):
    """Configuration of `SourceDetectionTask` (LSST names and defaults)."""

    minPixels = Field(
        dtype=int, default=1, doc="detected sources with fewer than this many pixels are dropped"
    )
    isotropicGrow = Field(dtype=bool, default=False, doc="grow footprints isotropically (disc) or Manhattan")
    combinedGrow = Field(dtype=bool, default=True, doc="grow all footprints together (touching ones merge)")
    nSigmaToGrow = Field(dtype=float, default=2.4, doc="grow footprints by this many PSF sigma")
    returnOriginalFootprints = Field(dtype=bool, default=False, doc="return the footprints before growing")
    thresholdValue = Field(dtype=float, default=5.0, doc="detection threshold, in units of thresholdType")
    includeThresholdMultiplier = Field(
        dtype=float, default=1.0, doc="keep a footprint only if its peak reaches this times the threshold"
    )
    thresholdType = ChoiceField(
        dtype=str,
        default="stdev",
        doc="units of thresholdValue",
        allowed={
            "stdev": "clipped stdev of the smoothed image",
            "value": "image value",
            "variance": "clipped variance of the smoothed image (threshold = value * variance)",
            "pixel_stdev": "per-pixel sqrt(variance) of the smoothed variance plane",
        },
    )
    thresholdPolarity = ChoiceField(
        dtype=str,
        default="positive",
        doc="which sources to detect",
        allowed={"positive": "positive only", "negative": "negative only", "both": "both"},
    )
    adjustBackground = Field(dtype=float, default=0.0, doc="constant added to the image before detection")
    reEstimateBackground = Field(dtype=bool, default=True, doc="re-estimate the background after detection")
    backgroundBinSize = Field(dtype=int, default=128, doc="bin size of the re-estimated background")
    backgroundStatistic = Field(dtype=str, default="MEANCLIP", doc="statistic of the background bins")
    backgroundApproxOrder = Field(dtype=int, default=6, doc="Chebyshev order of the background model")
    backgroundIgnoredPixelMask = ListField(
        dtype=str,
        default=["BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA"],
        doc="mask planes ignored when re-estimating the background",
    )
    doTempLocalBackground = Field(
        dtype=bool, default=False, doc="temporary local background (not implemented)"
    )
    doTempWideBackground = Field(dtype=bool, default=False, doc="temporary wide background (not implemented)")
    nPeaksMaxSimple = Field(dtype=int, default=1, doc="kept for LSST compatibility (unused)")
    nSigmaForKernel = Field(dtype=float, default=7.0, doc="smoothing kernel width in PSF sigma")
    doMergeSaturatedPeaks = Field(
        dtype=bool,
        default=True,
        doc="calexpress: the peaks of a footprint within saturatedPeakRadius PSF sigma of one saturated "
        "region become a single peak at the region's core (`calexpress.footprints.merge_saturated_peaks`)",
    )
    saturatedPeakRadius = Field(
        dtype=float, default=2.0, doc="calexpress: peak-merging radius around saturated regions, PSF sigma"
    )
    saturatedMaskPlanes = ListField(
        dtype=str, default=["SAT"], doc="calexpress: mask planes marking saturated pixels"
    )
    statsMask = ListField(
        dtype=str,
        default=["BAD", "SAT", "EDGE", "NO_DATA"],
        doc="mask planes ignored when computing the threshold statistics",
    )

    def validate(self) -> None:
        super().validate()
        if self.doTempLocalBackground or self.doTempWideBackground:
            raise ValueError("doTempLocalBackground/doTempWideBackground are not implemented in calexpress")


def gaussian_kernel_1d(sigma: float, width: int) -> np.ndarray:
    """Normalised 1-D Gaussian of ``width`` (odd) samples."""
    half = width // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _separable_convolve(img: np.ndarray, k: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    ny, nx = img.shape
    h = k.size // 2
    tmp = np.zeros((ny, nx), np.float32)
    for y in range(ny):
        for j in range(k.size):
            yy = min(max(y + j - h, 0), ny - 1)
            kj = k[j]
            for x in range(nx):
                tmp[y, x] += kj * img[yy, x]
    out = np.empty((ny, nx), np.float32)
    for y in range(ny):
        for x in range(nx):
            s = np.float32(0.0)
            if h <= x < nx - h:
                for j in range(k.size):
                    s += k[j] * tmp[y, x + j - h]
            else:
                for j in range(k.size):
                    xx = min(max(x + j - h, 0), nx - 1)
                    s += k[j] * tmp[y, xx]
            out[y, x] = s
    return out


def smooth_image(image: np.ndarray, sigma: float, width: int) -> np.ndarray:
    """Separable Gaussian smoothing (float32, numba); borders replicate the edge (detection marks EDGE)."""
    k = gaussian_kernel_1d(sigma, width)
    return _separable_convolve(np.ascontiguousarray(image, dtype=np.float32), k)


def _label(binary: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    return labels.astype(np.int32, copy=False), int(n)


def make_source_catalog(footprints: FootprintSet, id_info: ExposureIdInfo | int | None = None) -> Table:
    """Minimal source catalog, one row per footprint (its brightest peak).

    Columns: ``id`` (``(expId << unusedBits) + n``), ``parent`` (0), ``coord_ra``/``coord_dec`` (NaN, rad),
    ``footprint`` (index into ``footprints``), ``peak_x``, ``peak_y`` (int), ``peak_value``,
    ``peak_significance``, ``deblend_nPeaks``.  The `FootprintSet` is attached as ``table.footprints``
    (an attribute, not serialised) so that measurement can find it.
    """
    if id_info is None:
        id_info = ExposureIdInfo(0, 32)
    elif not isinstance(id_info, ExposureIdInfo):
        id_info = ExposureIdInfo(int(id_info), 32)
    n = len(footprints)
    first = footprints.first_peak
    t = Table()
    t["id"] = Column(id_info.make_ids(n), dtype=np.int64, description="unique id")
    t["coord_ra"] = Column(np.full(n, np.nan), unit=u.rad, description="position in ra/dec")
    t["coord_dec"] = Column(np.full(n, np.nan), unit=u.rad, description="position in ra/dec")
    t["parent"] = Column(np.zeros(n, np.int64), description="unique id of parent source")
    t["footprint"] = Column(
        np.arange(n, dtype=np.int32), description="index of the footprint in its FootprintSet"
    )
    t["peak_x"] = Column(footprints.peak_x[first].astype(np.int32), unit=u.pix, description="peak x position")
    t["peak_y"] = Column(footprints.peak_y[first].astype(np.int32), unit=u.pix, description="peak y position")
    t["peak_value"] = Column(
        footprints.peak_value[first], unit=u.ct, description="smoothed image value at the peak"
    )
    t["peak_significance"] = Column(
        footprints.peak_significance[first], description="peak value in units of the smoothed-image noise"
    )
    t["deblend_nPeaks"] = Column(
        footprints.n_peaks.astype(np.int32), description="number of peaks in the footprint"
    )
    t.footprints = footprints  # type: ignore[attr-defined]
    return t


class SourceDetectionTask(Task):
    """Detect sources above a threshold in a PSF-smoothed image (see the module docstring)."""

    ConfigClass = SourceDetectionConfig
    _DefaultName = "sourceDetection"

    def __init__(
        self, config: SourceDetectionConfig | None = None, schema: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(config=config, **kwargs)

    # ------------------------------------------------------------------------------------------
    @timeMethod
    def run(
        self,
        table: Any,
        exposure: Any,
        doSmooth: bool = True,
        sigma: float | None = None,
        clearMask: bool = True,
        expId: ExposureIdInfo | int | None = None,
    ) -> Struct:
        """Detect sources, set DETECTED, optionally re-estimate the background.

        Parameters
        ----------
        table : ignored (LSST compatibility; may be None)
        exposure : `calexpress.exposure.Exposure`
            Modified in place: mask planes, and the image when the background is re-estimated.
        doSmooth : `bool`
            Smooth with the PSF before thresholding.
        sigma : `float`, optional
            Smoothing sigma; default the PSF determinant radius.
        clearMask : `bool`
            Clear DETECTED/DETECTED_NEGATIVE first.
        expId : `ExposureIdInfo` or `int`, optional
            For the source ids of ``sources``.

        Returns
        -------
        `Struct` with ``sources`` (minimal catalog, `make_source_catalog`), ``positive``, ``negative``
        (`FootprintSet` or None), ``numPos``, ``numNeg``, ``background`` (the re-estimated background
        component or None), ``factor`` (1.0), ``sigma``, ``threshold`` (smoothed-image units),
        ``noise`` (clipped stdev of the smoothed image).
        """
        res = self.detectFootprints(exposure, doSmooth=doSmooth, sigma=sigma, clearMask=clearMask)
        res.sources = make_source_catalog(res.positive, expId)
        return res

    @timeMethod
    def detectFootprints(
        self, exposure: Any, doSmooth: bool = True, sigma: float | None = None, clearMask: bool = True
    ) -> Struct:
        """Footprints of the exposure without creating a catalog (same results as `run`)."""
        cfg = self.config
        image = exposure.image
        mask = exposure.mask
        ny, nx = image.shape
        bit_det = exposure.add_mask_plane("DETECTED")
        bit_neg = exposure.add_mask_plane("DETECTED_NEGATIVE")
        bit_edge = exposure.add_mask_plane("EDGE")
        if clearMask:
            mask &= np.int32(~((1 << bit_det) | (1 << bit_neg)))

        if sigma is None:
            if exposure.psf is None:
                raise TaskError("detection needs a PSF (exposure.psf is None) or an explicit sigma")
            sigma = float(exposure.psf.determinant_radius())
        sigma = float(sigma)
        if doSmooth:
            width = (int(sigma * cfg.nSigmaForKernel + 0.5) // 2) * 2 + 1
            work = np.asarray(image, np.float32)
            if cfg.adjustBackground:
                work = work + np.float32(cfg.adjustBackground)
            smoothed = smooth_image(work, sigma, width)
            border = width // 2
        else:
            width = 1
            smoothed = np.asarray(image, np.float32)
            if cfg.adjustBackground:
                smoothed = smoothed + np.float32(cfg.adjustBackground)
            border = 0
        self.metadata.update(doSmooth=doSmooth, sigma=sigma, smoothingKernelWidth=width)

        if border > 0:
            edge = np.int32(1 << bit_edge)
            mask[:border, :] |= edge
            mask[-border:, :] |= edge
            mask[:, :border] |= edge
            mask[:, -border:] |= edge
        # bad pixels (NaN etc.) never seed detections
        finite = np.isfinite(smoothed)
        if not finite.all():
            smoothed = np.where(finite, smoothed, np.float32(0))

        stats_bits = exposure.get_plane_bitmask(*cfg.statsMask)
        mid = (
            (slice(border, ny - border), slice(border, nx - border))
            if border > 0
            else (slice(None), slice(None))
        )
        noise = self._noise(smoothed[mid], mask[mid], stats_bits, exposure, mid, sigma, width)
        if cfg.thresholdType == "value":
            threshold = cfg.thresholdValue
        elif cfg.thresholdType == "variance":
            threshold = cfg.thresholdValue * noise * noise
        else:
            threshold = cfg.thresholdValue * noise
        if not np.isfinite(threshold) or threshold <= 0:
            raise TaskError(
                f"detection threshold is not positive and finite ({threshold}); is the image empty?"
            )

        positive = negative = None
        valid = np.zeros((ny, nx), bool)
        valid[mid] = True
        polarity = cfg.thresholdPolarity
        sat = None
        if cfg.doMergeSaturatedPeaks:
            sat = (mask & exposure.get_plane_bitmask(*cfg.saturatedMaskPlanes)) != 0
            if not sat.any():
                sat = None
        if polarity in ("positive", "both"):
            positive = self._footprints(smoothed, valid, threshold, noise)
        if polarity in ("negative", "both") or cfg.reEstimateBackground:
            negative = self._footprints(-smoothed, valid, threshold, noise)

        grow = int(cfg.nSigmaToGrow * sigma + 0.5)
        self.metadata["nGrow"] = grow
        if not cfg.returnOriginalFootprints:
            if positive is not None:
                positive = positive.grow(grow, cfg.isotropicGrow)
            if negative is not None:
                negative = negative.grow(grow, cfg.isotropicGrow)
        if positive is not None and sat is not None:
            positive = merge_saturated_peaks(
                positive, sat, int(cfg.saturatedPeakRadius * sigma + 0.5), np.asarray(image)
            )
        if positive is not None:
            positive.set_mask(mask, bit_det)
        if negative is not None:
            negative.set_mask(mask, bit_neg)

        background = None
        if cfg.reEstimateBackground:
            background = self.reEstimateBackground(exposure)
        if negative is not None and polarity == "positive":
            # LSST computes negative footprints for the background only, then clears them
            mask &= np.int32(~(1 << bit_neg))
            negative = None
        if positive is None:
            positive = FootprintSet.empty((ny, nx))
        num_pos = len(positive)
        num_neg = 0 if negative is None else len(negative)
        self.log.info(
            "Detected %d positive peaks in %d footprints%s to %g sigma",
            len(positive.peak_x),
            num_pos,
            "" if negative is None else f" and {num_neg} negative footprints",
            cfg.thresholdValue,
        )
        return Struct(
            positive=positive,
            negative=negative,
            numPos=num_pos,
            numNeg=num_neg,
            background=background,
            factor=1.0,
            sigma=sigma,
            threshold=float(threshold),
            noise=float(noise),
            smoothed=smoothed,
        )

    # ------------------------------------------------------------------------------------------
    def _noise(
        self,
        smoothed_mid: np.ndarray,
        mask_mid: np.ndarray,
        bits: int,
        exposure: Any,
        mid: tuple,
        sigma: float,
        width: int,
    ) -> float:
        """Clipped standard deviation of the smoothed image (or of the smoothed variance for pixel_stdev)."""
        if self.config.thresholdType == "pixel_stdev":
            var = np.asarray(exposure.variance, np.float32)
            k = gaussian_kernel_1d(sigma, width)
            f = float((k.astype(np.float64) ** 2).sum() ** 2)  # variance reduction of the 2-D kernel
            mean, _, _ = clipped_stats(var[mid], mask_mid, bits)
            return math.sqrt(max(mean * f, 0.0))
        if smoothed_mid.size > 2_000_000:
            # neighbouring smoothed pixels are strongly correlated: every 4th pixel gives the same
            # statistic to well below a per cent, four times faster
            smoothed_mid, mask_mid = smoothed_mid[::2, ::2], mask_mid[::2, ::2]
        _, std, n = clipped_stats(smoothed_mid, mask_mid, bits)
        if n < 2 or not np.isfinite(std):
            raise TaskError("cannot compute the detection threshold: no unmasked pixels")
        return std

    def _footprints(
        self, smoothed: np.ndarray, valid: np.ndarray, threshold: float, noise: float
    ) -> FootprintSet:
        cfg = self.config
        above = (smoothed >= threshold) & valid
        labels, n = _label(above)
        fps = FootprintSet.from_labels(labels, smoothed, noise=noise)
        if n == 0:
            return fps
        keep = np.ones(n, bool)
        if cfg.minPixels > 1:
            keep &= fps.npix >= cfg.minPixels
        if cfg.includeThresholdMultiplier != 1.0:
            keep &= fps.peak_value[fps.first_peak] >= cfg.includeThresholdMultiplier * threshold
        if not keep.all():
            fps = fps.select(keep)
        return fps

    def reEstimateBackground(self, exposure: Any) -> Any:
        """Fit the background of the unsmoothed image, ignoring detections, and subtract it.

        Returns the background component from ``calexpress.background.estimate_background``.
        """
        from .background import estimate_background

        cfg = self.config
        bits = exposure.get_plane_bitmask(*cfg.backgroundIgnoredPixelMask)
        bg = estimate_background(
            exposure.image,
            exposure.mask,
            bits,
            bin_size=cfg.backgroundBinSize,
            stat=cfg.backgroundStatistic,
            order=cfg.backgroundApproxOrder,
        )
        model = bg.get_image(exposure.image.shape)
        exposure.image -= model.astype(exposure.image.dtype, copy=False)
        self.metadata["reEstimatedBackgroundMean"] = float(np.mean(model))
        return bg
