"""Astrometric calibration (LSST ``meas_astrom.AstrometryTask``): match, fit a TAN-SIP WCS, iterate."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from astropy.table import Table
from calexpress.config import Config, ConfigurableField, Field, RangeField
from calexpress.task import Struct, Task, TaskError, timeMethod

from .matcher import MatcherFailure, MatchPatternTask, match_xy
from .photocal import _column
from .wcs_fitter import FitTanSipWcsTask

__all__ = ["AstrometryConfig", "AstrometryTask", "select_astrometry_sources", "set_sky_coords"]


def set_sky_coords(sourceCat: Table, wcs, xcol: np.ndarray, ycol: np.ndarray) -> None:
    """Set ``coord_ra``/``coord_dec`` (radians) of every source from its centroid and ``wcs``."""
    ok = np.isfinite(xcol) & np.isfinite(ycol)
    ra = np.full(len(sourceCat), np.nan)
    dec = np.full(len(sourceCat), np.nan)
    if ok.any():
        r, d = wcs.all_pix2world(xcol[ok], ycol[ok], 0)
        ra[ok], dec[ok] = np.radians(r), np.radians(d)
    sourceCat["coord_ra"] = ra
    sourceCat["coord_dec"] = dec
    sourceCat["coord_ra"].unit = "rad"
    sourceCat["coord_dec"].unit = "rad"


def centroids(sourceCat: Table) -> tuple[np.ndarray, np.ndarray]:
    """slot_Centroid x/y (falling back to ``base_SdssCentroid``, then the peak)."""
    for xname in ("slot_Centroid_x", "base_SdssCentroid_x", "base_NaiveCentroid_x", "x", "peak_x"):
        try:
            x = _column(sourceCat, xname).astype(float)
            y = _column(sourceCat, xname[:-1] + "y").astype(float)
            return x, y
        except KeyError:
            continue
    raise TaskError("source catalog has no centroid columns (slot_Centroid_x/y)")


def centroid_errors(sourceCat: Table, floor: float = 0.005) -> np.ndarray:
    """Per-source centroid error (pixels, per axis) from slot_Centroid_xErr/yErr plus a floor; NaN if none."""
    for xname in ("slot_Centroid_xErr", "base_SdssCentroid_xErr"):
        try:
            ex = _column(sourceCat, xname).astype(float)
            ey = _column(sourceCat, xname[:-4] + "yErr").astype(float)
            return np.sqrt(0.5 * (ex**2 + ey**2) + floor**2)
        except KeyError:
            continue
    return np.full(len(sourceCat), np.nan)


def select_astrometry_sources(
    sourceCat: Table, fluxField: str, minSnr: float, badFlags: list[str]
) -> np.ndarray:
    """LSST MatcherSourceSelector: S/N > minSnr, finite centroid and flux, no bad flags, not a parent."""
    x, y = centroids(sourceCat)
    flux = _column(sourceCat, fluxField).astype(float)
    try:
        err = _column(sourceCat, fluxField.replace("_instFlux", "_instFluxErr")).astype(float)
    except KeyError:
        err = np.sqrt(np.abs(flux))
    with np.errstate(divide="ignore", invalid="ignore"):
        good = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0) & (flux / err > minSnr)
    for flag in badFlags:
        try:
            good &= ~_column(sourceCat, flag).astype(bool)
        except KeyError:
            continue
    if "deblend_nChild" in sourceCat.colnames:
        good &= np.asarray(sourceCat["deblend_nChild"]) == 0
    if "sky_source" in sourceCat.colnames:
        good &= ~np.asarray(sourceCat["sky_source"], bool)
    return good


class AstrometryConfig(Config):
    """Configuration of `AstrometryTask` (LSST names and defaults)."""

    matcher = ConfigurableField(target=MatchPatternTask, doc="Pattern matcher")
    wcsFitter = ConfigurableField(target=FitTanSipWcsTask, doc="TAN-SIP fitter")
    maxIter = RangeField(dtype=int, default=3, min=1, doc="Match+fit iterations")
    minMatchDistanceArcSec = RangeField(
        dtype=float, default=0.001, min=0, doc="Stop below this match distance"
    )
    matchDistanceSigma = RangeField(dtype=float, default=2.0, min=0, doc="Match radius = mean + this * std")
    forceKnownWcs = Field(dtype=bool, default=False, doc="Do not fit; only match with the input WCS")
    sourceFluxType = Field(
        dtype=str, default="Ap", doc="Source flux slot used for selection (Ap, Psf, Calib)"
    )
    minSnr = RangeField(
        dtype=float,
        default=10.0,
        min=0,
        doc="sourceSelector minimum S/N (LSST: 40; the weighted fit makes fainter stars useful)",
    )
    badFlags = Field(
        dtype=str,
        default="base_PixelFlags_flag_edge,base_PixelFlags_flag_interpolatedCenter,"
        "base_PixelFlags_flag_saturatedCenter,slot_Centroid_flag",
        doc="Comma-separated flags that exclude a source",
    )
    doWeightedFit = Field(
        dtype=bool, default=True, doc="Weight the WCS fit by the centroid errors (calexpress)"
    )
    minMatches = RangeField(dtype=int, default=6, min=3, doc="Fail with fewer matches than this")
    maxOffsetArcsec = RangeField(
        dtype=float,
        default=150.0,
        min=0,
        doc="Largest prior-WCS position error searched (arcsec; calexpress)",
    )
    finalMatchRadiusArcsec = RangeField(
        dtype=float, default=1.0, min=0, doc="Largest match distance kept after the last fit (arcsec)"
    )


class AstrometryTask(Task):
    """Fit the WCS of an exposure against a reference catalog.

    Parameters
    ----------
    refObjLoader : `LoadIndexedReferenceObjectsTask`
    """

    ConfigClass = AstrometryConfig
    _DefaultName = "astrometry"

    def __init__(self, refObjLoader: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refObjLoader = refObjLoader
        self.makeSubtask("matcher")
        self.makeSubtask("wcsFitter")

    def setRefObjLoader(self, refObjLoader: Any) -> None:
        self.refObjLoader = refObjLoader

    def _epoch(self, exposure) -> float | None:
        vi = getattr(exposure, "visit_info", None)
        date = getattr(vi, "date", None) if vi is not None else None
        if date is not None:
            try:
                return float(date.tai.mjd)
            except AttributeError:
                return float(date)
        md = getattr(exposure, "metadata", None)
        if md is not None and "MJD-AVG" in md:
            return float(md["MJD-AVG"])
        return None

    @timeMethod
    def run(
        self, sourceCat: Table, exposure, refCat: Table | None = None, fluxField: str | None = None
    ) -> Struct:
        """Match ``sourceCat`` to the reference catalog, fit the WCS and set it on ``exposure``.

        Returns
        -------
        result : `Struct`
            ``refCat`` (loaded references), ``fluxField``, ``matches`` (Struct of ``i_src``, ``i_ref``,
            ``distance`` in radians), ``scatterOnSky`` (arcsec), ``matchMeta`` (dict), ``wcs``.

        Raises
        ------
        calexpress.task.TaskError
            No reference stars, too few matches, no pattern match or a degenerate fit.
        """
        cfg = self.config
        t0 = time.perf_counter()
        wcs0 = exposure.wcs
        if wcs0 is None:
            raise TaskError("astrometry: the exposure has no initial WCS")
        ny, nx = exposure.image.shape
        bbox = (0, 0, nx, ny)
        filterName = getattr(exposure, "filter", None)
        epoch = self._epoch(exposure)
        pixscale = float(np.sqrt(abs(np.linalg.det(wcs0.pixel_scale_matrix)))) * 3600.0
        extra = int(np.ceil(cfg.maxOffsetArcsec / pixscale))
        if refCat is None:
            if self.refObjLoader is None:
                raise TaskError("astrometry: no reference object loader")
            load_box = (-extra, -extra, nx + 2 * extra, ny + 2 * extra)
            res = self.refObjLoader.loadPixelBox(load_box, wcs0, filterName, epoch)
            refCat, fluxField = res.refCat, res.fluxField
            matchMeta = self.refObjLoader.getMetadataBox(bbox, wcs0, filterName, epoch)
        else:
            matchMeta = {
                "RA": float("nan"),
                "DEC": float("nan"),
                "RADIUS": 0.0,
                "SMATCHV": 1,
                "FILTER": filterName or "",
                "EPOCH": epoch or 0.0,
            }
        if len(refCat) == 0:
            raise TaskError(f"astrometry: no reference stars in the field of view (filter {filterName!r})")
        t_load, c_load = time.perf_counter(), time.process_time()
        x, y = centroids(sourceCat)
        flux_slot = f"slot_{cfg.sourceFluxType}Flux_instFlux"
        try:
            _column(sourceCat, flux_slot)
        except KeyError:
            flux_slot = "base_PsfFlux_instFlux"
        sel = select_astrometry_sources(
            sourceCat, flux_slot, cfg.minSnr, [f.strip() for f in cfg.badFlags.split(",") if f.strip()]
        )
        s_idx = np.nonzero(sel)[0]
        if len(s_idx) < cfg.minMatches:
            raise TaskError(
                f"astrometry: only {len(s_idx)} sources with S/N > {cfg.minSnr} (need {cfg.minMatches})"
            )
        sx, sy = x[s_idx], y[s_idx]
        ssig = centroid_errors(sourceCat)[s_idx]
        sflux = _column(sourceCat, flux_slot)[s_idx].astype(float)
        ref_ra = np.degrees(np.asarray(refCat["coord_ra"], float))
        ref_dec = np.degrees(np.asarray(refCat["coord_dec"], float))
        ref_flux = (
            np.asarray(refCat[fluxField], float) if fluxField in refCat.colnames else np.ones(len(refCat))
        )
        rx, ry = wcs0.all_world2pix(ref_ra, ref_dec, 0, quiet=True)
        wcs = wcs0
        if cfg.forceKnownWcs:
            i_s, i_r, _ = match_xy(
                np.column_stack([sx, sy]), np.column_stack([rx, ry]), cfg.finalMatchRadiusArcsec / pixscale
            )
        else:
            try:
                m = self.matcher.matchPixels(
                    np.column_stack([sx, sy]),
                    sflux,
                    np.column_stack([rx, ry]),
                    ref_flux,
                    ((nx - 1) / 2.0, (ny - 1) / 2.0),
                )
            except MatcherFailure as exc:
                raise TaskError(f"astrometry: {exc}") from None
            i_s, i_r = m.i_src, m.i_ref
            self.metadata["matcherRotationDeg"] = m.rotationDeg
            self.metadata["matcherScale"] = m.scale
            self.metadata["matcherOffsetPix"] = list(m.offset)
            scatter = None

            def fit_matches(i_s, i_r, wcs):
                return self.wcsFitter.fitWcs(
                    sx[i_s], sy[i_s], ref_ra[i_r], ref_dec[i_r], wcs, bbox,
                    sigma=ssig[i_s] if cfg.doWeightedFit else None, priorWcs=wcs0,
                )

            for _ in range(cfg.maxIter):
                if len(i_s) < cfg.minMatches:
                    raise TaskError(f"astrometry: too few matches ({len(i_s)}, need {cfg.minMatches})")
                fit = fit_matches(i_s, i_r, wcs)
                wcs = fit.wcs
                scatter = fit.scatterOnSky
                # Re-match with the new WCS.
                px, py = wcs.all_world2pix(ref_ra, ref_dec, 0, quiet=True)
                d = np.hypot(*fit.residuals[fit.used].T) / pixscale
                radius = float(np.mean(d) + cfg.matchDistanceSigma * np.std(d))
                radius = min(
                    max(radius, 3.0 * float(np.median(d)), 0.5), cfg.finalMatchRadiusArcsec / pixscale
                )
                i_s, i_r, _ = match_xy(np.column_stack([sx, sy]), np.column_stack([px, py]), radius)
                if float(np.max(d)) * pixscale < cfg.minMatchDistanceArcSec:
                    break
            fit = fit_matches(i_s, i_r, wcs)
            wcs = fit.wcs
            i_s, i_r = i_s[fit.used], i_r[fit.used]
            scatter = fit.scatterOnSky
        t_fit, c_fit = time.perf_counter(), time.process_time()
        if len(i_s) < cfg.minMatches:
            raise TaskError(f"astrometry: too few matches ({len(i_s)}, need {cfg.minMatches})")
        exposure.wcs = wcs
        set_sky_coords(sourceCat, wcs, x, y)
        src_rows = s_idx[i_s]
        sra, sdec = np.asarray(sourceCat["coord_ra"])[src_rows], np.asarray(sourceCat["coord_dec"])[src_rows]
        rra, rdec = np.radians(ref_ra[i_r]), np.radians(ref_dec[i_r])
        cosd = np.sin(sdec) * np.sin(rdec) + np.cos(sdec) * np.cos(rdec) * np.cos(sra - rra)
        dist = np.arccos(np.clip(cosd, -1, 1))
        used = np.zeros(len(sourceCat), bool)
        used[src_rows] = True
        sourceCat["calib_astrometry_used"] = used
        sourceCat["calib_astrometry_used"].description = "set if source was used in astrometric calibration"
        rms_mas = float(np.sqrt(np.mean(dist**2))) * 206264806.247
        if "centroid_x" in refCat.colnames:
            px, py = wcs.all_world2pix(ref_ra, ref_dec, 0, quiet=True)
            refCat["centroid_x"], refCat["centroid_y"] = px, py
        self.metadata.update(
            {
                "numMatches": int(len(src_rows)),
                "scatterOnSkyArcsec": float(scatter or 0.0),
                "astromRmsMas": rms_mas,
                "numRefObjects": int(len(refCat)),
                "numSources": int(len(s_idx)),
                "refLoadSeconds": t_load - t0,
                "solveSeconds": t_fit - t_load,
                "solveCpuSeconds": c_fit - c_load,
            }
        )
        self.log.info(
            "Matched and fit WCS: %d matches, rms %.1f mas (%.3f s solve)",
            len(src_rows),
            rms_mas,
            t_fit - t_load,
        )
        matches = Struct(i_src=src_rows, i_ref=i_r, distance=dist)
        return Struct(
            refCat=refCat,
            fluxField=fluxField,
            matches=matches,
            scatterOnSky=scatter,
            matchMeta=matchMeta,
            wcs=wcs,
            rmsMas=rms_mas,
            solveSeconds=t_fit - t_load,
        )
