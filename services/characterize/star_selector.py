"""Star selection by object size (after LSST ``ObjectSizeStarSelectorTask``, ``lsst_processccd.md`` 2.6)."""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from calexpress.config import Config, Field, ListField
from calexpress.task import Struct, Task, timeMethod

__all__ = ["ObjectSizeStarSelectorConfig", "ObjectSizeStarSelectorTask", "select_stars_by_size"]


class ObjectSizeStarSelectorConfig(Config):
    """LSST ``ObjectSizeStarSelectorConfig`` names and defaults."""

    sourceFluxField = Field(
        dtype=str, default="base_GaussianFlux_instFlux", doc="Flux column for the flux cut"
    )
    doFluxLimit = Field(dtype=bool, default=True, doc="Apply fluxMin / fluxMax")
    fluxMin = Field(dtype=float, default=12500.0, doc="Minimum flux (instFlux)")
    fluxMax = Field(dtype=float, default=0.0, doc="Maximum flux; 0 = no limit")
    doSignalToNoiseLimit = Field(dtype=bool, default=False, doc="Apply signalToNoiseMin / Max")
    signalToNoiseMin = Field(dtype=float, default=20.0, doc="Minimum S/N")
    signalToNoiseMax = Field(dtype=float, default=0.0, doc="Maximum S/N; 0 = no limit")
    widthMin = Field(dtype=float, default=0.0, doc="Minimum width sqrt((Ixx+Iyy)/2), pixels")
    widthMax = Field(dtype=float, default=10.0, doc="Maximum width, pixels")
    widthStdAllowed = Field(
        dtype=float, default=0.15, doc="Stop when the stellar locus std is below this x median"
    )
    nSigmaClip = Field(dtype=float, default=2.0, doc="Clipping of the stellar locus (sigma)")
    spatialOrder = Field(
        dtype=int,
        default=2,
        doc="calexpress: order of the polynomial in (x, y) followed by the locus width when clipping "
        "(0: LSST's constant width)",
    )
    spatialNSigmaClip = Field(
        dtype=float,
        default=3.0,
        doc="calexpress: clipping (sigma) of the residuals from the spatial width model (spatialOrder > 0); "
        "they scatter less than the raw widths, so LSST's 2 sigma would drop many good stars",
    )
    centroidField = Field(dtype=str, default="base_SdssCentroid", doc="Centroid prefix (for spatialOrder)")
    doRejectBlends = Field(
        dtype=bool,
        default=True,
        doc="calexpress: reject sources whose footprint holds more than one peak (``deblend_nPeaks`` > 1; "
        "charImage does not deblend).  On the noise-free simcamA g frame such blends biased the PSF "
        "size by +0.10 %",
    )
    shapeField = Field(dtype=str, default="base_SdssShape", doc="Adaptive-moments prefix")
    badFlags = ListField(
        dtype=str,
        default=[
            "base_PixelFlags_flag_edge",
            "base_PixelFlags_flag_interpolatedCenter",
            "base_PixelFlags_flag_saturatedCenter",
            "base_PixelFlags_flag_crCenter",
            "base_PixelFlags_flag_bad",
            "base_PixelFlags_flag_interpolated",
        ],
        doc="Sources with any of these flags are not stars",
    )


def _kmeans_1d(width: np.ndarray, ncluster: int = 4, widthStd: float = 0.15, niter: int = 10) -> np.ndarray:
    """1-D k-means on ``width`` with median centres; returns the cluster index of every value."""
    ws = np.sort(width)
    mean0 = ws[len(ws) // 10]
    delta = 2 * widthStd * mean0
    centers = mean0 + delta * np.arange(ncluster)
    ids = np.argmin(np.abs(width[:, None] - centers[None, :]), axis=1)
    for _ in range(niter):
        new_centers = np.array(
            [np.median(width[ids == k]) if np.any(ids == k) else centers[k] for k in range(ncluster)]
        )
        new_ids = np.argmin(np.abs(width[:, None] - new_centers[None, :]), axis=1)
        centers = new_centers
        if np.array_equal(new_ids, ids):
            break
        ids = new_ids
    return ids


def _spatial_width_model(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, member: np.ndarray, order: int
) -> np.ndarray:
    """Width of the stellar locus at every (x, y): a polynomial fitted to the members' widths."""
    x0, sx = x[member].mean(), max(np.ptp(x[member]), 1.0)
    y0, sy = y[member].mean(), max(np.ptp(y[member]), 1.0)
    u, v = (x - x0) / sx, (y - y0) / sy
    terms = np.array([u**i * v**j for j in range(order + 1) for i in range(order + 1 - j)]).T
    coef, *_ = np.linalg.lstsq(terms[member], w[member], rcond=None)
    return terms @ coef


def select_stars_by_size(
    width: np.ndarray,
    usable: np.ndarray,
    config: ObjectSizeStarSelectorConfig,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
) -> np.ndarray:
    """Return a boolean array: True for the members of the smallest-width cluster (the stellar locus).

    With positions ``x``, ``y`` the locus width may vary over the detector (``spatialOrder``): the
    clipping uses the residuals from a polynomial fit of the members' widths, so that stars in a corner
    where the PSF is a few per cent wider are not lost (on simcamA visit 1002 the plain clipping
    dropped every star in the top 40 % of the detector).
    """
    sel = np.zeros(len(width), bool)
    idx = np.nonzero(usable)[0]
    if len(idx) == 0:
        return sel
    w = width[idx]
    if len(idx) < 4:
        sel[idx] = True
        return sel
    ids = _kmeans_1d(w, 4, config.widthStdAllowed)
    member = ids == 0
    spatial = x is not None and y is not None and config.spatialOrder > 0
    if spatial:
        xs, ys = np.asarray(x, float)[idx], np.asarray(y, float)[idx]
    for _ in range(10):
        if member.sum() < 5:
            break
        ref = np.full(len(w), np.median(w[member]))
        nmin = {1: 8, 2: 15}
        if spatial:
            order = max(
                (o for o in range(config.spatialOrder, 0, -1) if member.sum() >= nmin.get(o, 6 * o)),
                default=0,
            )
            if order > 0:
                ref = _spatial_width_model(w, xs, ys, member, order)
        resid = w - ref
        med = np.median(ref[member])
        q1, q3 = np.percentile(resid[member], [25, 75])
        sd = min(np.std(resid[member]), 0.741 * (q3 - q1))
        nsig = config.spatialNSigmaClip if spatial else config.nSigmaClip
        new = np.abs(resid) < nsig * max(sd, 1e-6)
        if np.array_equal(new, member):
            break
        member = new
        if sd < config.widthStdAllowed * med:
            break
    sel[idx[member]] = True
    return sel


class ObjectSizeStarSelectorTask(Task):
    """Select PSF stars from a measured catalog by size (the tight locus of small objects)."""

    ConfigClass = ObjectSizeStarSelectorConfig
    _DefaultName = "starSelector"

    @timeMethod
    def run(self, sourceCat: Table, exposure=None) -> Struct:
        """Return `Struct` with ``selected`` (bool array) and ``sourceCat`` (the selected rows)."""
        cfg = self.config
        n = len(sourceCat)
        pre = cfg.shapeField
        ixx = np.asarray(sourceCat[f"{pre}_xx"], float)
        iyy = np.asarray(sourceCat[f"{pre}_yy"], float)
        width = np.sqrt(np.clip((ixx + iyy) / 2, 0, None))
        flux = np.asarray(sourceCat[cfg.sourceFluxField], float)
        usable = np.isfinite(width) & np.isfinite(flux) & (width > cfg.widthMin) & (width < cfg.widthMax)
        if f"{pre}_flag" in sourceCat.colnames:
            usable &= ~np.asarray(sourceCat[f"{pre}_flag"], bool)
        for name in cfg.badFlags:
            if name in sourceCat.colnames:
                usable &= ~np.asarray(sourceCat[name], bool)
        if cfg.doRejectBlends and "deblend_nPeaks" in sourceCat.colnames:
            usable &= ~(np.asarray(sourceCat["deblend_nPeaks"], float) > 1)
        if cfg.doFluxLimit:
            usable &= flux > cfg.fluxMin
            if cfg.fluxMax > 0:
                usable &= flux < cfg.fluxMax
        if cfg.doSignalToNoiseLimit:
            err = np.asarray(sourceCat[cfg.sourceFluxField + "Err"], float)
            snr = flux / err
            usable &= snr > cfg.signalToNoiseMin
            if cfg.signalToNoiseMax > 0:
                usable &= snr < cfg.signalToNoiseMax
        xy = {}
        if cfg.spatialOrder > 0 and f"{cfg.centroidField}_x" in sourceCat.colnames:
            xy = dict(
                x=np.asarray(sourceCat[f"{cfg.centroidField}_x"], float),
                y=np.asarray(sourceCat[f"{cfg.centroidField}_y"], float),
            )
        selected = select_stars_by_size(width, usable, cfg, **xy) if n else np.zeros(0, bool)
        self.log.info("Selected %d stars from %d usable sources (%d total)", selected.sum(), usable.sum(), n)
        return Struct(selected=selected, sourceCat=sourceCat[selected])
