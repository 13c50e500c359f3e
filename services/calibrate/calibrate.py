"""`CalibrateTask`: deep detection, deblending, measurement, astrometry and photometry (LSST calibrate.py).

Per-CCD summary keywords written to the calexp metadata (see ``docs`` and `SUMMARY_KEYWORDS`):

=========== ==========================================================================
``PSFSIGMA`` PSF determinant radius at the detector centre (pixels)
``PSFFWHM``  PSF FWHM = 2.3548 PSFSIGMA × pixel scale (arcsec)
``PSFELLIP`` PSF ellipticity |e| = sqrt((Ixx−Iyy)² + 4Ixy²)/(Ixx+Iyy) at the centre
``SKYLEVEL`` mean background level (e−/pixel) from the background model
``SKYNOISE`` clipped standard deviation of the background-subtracted sky (e−/pixel)
``MAGZERO``  AB mag giving 1 e−/s: zp − 2.5 log10(EXPTIME) (+ aperture-to-total term when configured)
``MAGZERO_RMS`` / ``MAGZERO_NOBJ``  error of MAGZERO and number of stars used
``COLORTERM1..3`` the colour term c0, c1, c2 applied
``ASTRMRMS`` astrometric RMS of the matches (mas); ``ASTRNMAT`` number of astrometric matches
``NPSFSTAR`` number of PSF stars (icSrc ``calib_psf_used``)
``LIMMAG5``  5σ point-source limiting magnitude (AB), total flux: MAGZERO scale, n_eff = 4π PSFSIGMA²
``CALIB_OK`` False when calibration failed (``CALIBERR`` holds the one-line reason)
=========== ==========================================================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from astropy.table import Table, hstack
from calexpress.catalog_calc import CatalogCalculationTask
from calexpress.characterize.apcorr import ApplyApCorrTask
from calexpress.config import Config, ConfigurableField, Field, ListField, RangeField
from calexpress.detection import SourceDetectionTask
from calexpress.measurement import SingleFrameMeasurementTask
from calexpress.task import ExposureIdInfo, Struct, Task, TaskError, timeMethod

from .astrometry import AstrometryTask, centroids, set_sky_coords
from .deblend import SourceDeblendTask
from .matcher import match_xy
from .photocal import PhotoCalTask, direct_match
from .refcat import LoadIndexedReferenceObjectsTask
from .sky_sources import SkyObjectsTask

__all__ = [
    "SUMMARY_KEYWORDS",
    "CalibrateConfig",
    "CalibrateTask",
    "add_calibrated_fluxes",
    "make_match_tables",
]

SUMMARY_KEYWORDS = {
    "PSFSIGMA": "[pixel] PSF determinant radius at the detector centre",
    "PSFFWHM": "[arcsec] PSF FWHM at the detector centre",
    "PSFELLIP": "PSF ellipticity at the detector centre",
    "SKYLEVEL": "[e-/pixel] mean sky background",
    "SKYNOISE": "[e-/pixel] sky noise (clipped std)",
    "MAGZERO": "[mag] AB mag giving 1 e-/s",
    "MAGZERO_RMS": "[mag] error of MAGZERO",
    "MAGZERO_NOBJ": "stars used for MAGZERO",
    "ASTRMRMS": "[mas] astrometric rms of the matches",
    "ASTRNMAT": "number of astrometric matches",
    "NPSFSTAR": "number of PSF stars",
    "LIMMAG5": "[mag] 5-sigma point-source limiting magnitude",
    "CALIB_OK": "calibration succeeded",
    "CALIBERR": "reason of the calibration failure",
}


def _set(md, key: str, value, comment: str | None = None) -> None:
    """Set a header keyword (HIERARCH for names longer than 8 characters, no warning)."""
    name = f"HIERARCH {key}" if len(key) > 8 else key
    md[name] = (value, comment if comment is not None else SUMMARY_KEYWORDS.get(key, ""))




class CalibrateConfig(Config):
    """Configuration of `CalibrateTask` (LSST names and defaults)."""

    doWrite = Field(dtype=bool, default=True, doc="Write src (and calexp, matches) in runDataRef")
    doWriteHeavyFootprintsInSources = Field(dtype=bool, default=True, doc="Kept for LSST compatibility")
    doWriteMatches = Field(dtype=bool, default=True, doc="Write srcMatch (normalised matches)")
    doWriteMatchesDenormalized = Field(dtype=bool, default=False, doc="Write srcMatchFull (joined matches)")
    doWriteExposure = Field(dtype=bool, default=True, doc="Write calexp and calexpBackground")
    doWriteUncalibratedOnFailure = Field(
        dtype=bool,
        default=False,
        doc="On a calibration failure write the calexp uncalibrated with CALIB_OK=False (calexpress)",
    )
    astromRefObjLoader = ConfigurableField(
        target=LoadIndexedReferenceObjectsTask, doc="Astrometric refcat loader"
    )
    photoRefObjLoader = ConfigurableField(
        target=LoadIndexedReferenceObjectsTask, doc="Photometric refcat loader"
    )
    astrometry = ConfigurableField(target=AstrometryTask, doc="Astrometric calibration")
    requireAstrometry = Field(dtype=bool, default=True, doc="Fail if astrometry fails")
    doAstrometry = Field(dtype=bool, default=True, doc="Run astrometric calibration")
    photoCal = ConfigurableField(target=PhotoCalTask, doc="Photometric calibration")
    requirePhotoCal = Field(dtype=bool, default=True, doc="Fail if photometric calibration fails")
    doPhotoCal = Field(dtype=bool, default=True, doc="Run photometric calibration")
    icSourceFieldsToCopy = ListField(
        dtype=str,
        default=["calib_psf_candidate", "calib_psf_used", "calib_psf_reserved"],
        doc="icSrc fields copied to src by position",
    )
    matchRadiusPix = RangeField(dtype=float, default=3.0, min=0, doc="icSrc-src match radius (pixels)")
    detection = ConfigurableField(target=SourceDetectionTask, doc="Deep detection")
    doDeblend = Field(dtype=bool, default=True, doc="Deblend multi-peak footprints")
    deblend = ConfigurableField(target=SourceDeblendTask, doc="SDSS-style template deblender")
    doSkySources = Field(dtype=bool, default=True, doc="Add sky sources")
    skySources = ConfigurableField(target=SkyObjectsTask, doc="Sky source generator")
    measurement = ConfigurableField(target=SingleFrameMeasurementTask, doc="Source measurement")
    doApCorr = Field(dtype=bool, default=True, doc="Apply the aperture corrections from characterize")
    applyApCorr = ConfigurableField(target=ApplyApCorrTask, doc="Aperture correction")
    catalogCalculation = ConfigurableField(target=CatalogCalculationTask, doc="Extendedness, footprint area")
    doInsertFakes = Field(dtype=bool, default=False, doc="Not supported (LSST compatibility)")

    def setDefaults(self) -> None:
        super().setDefaults()
        if hasattr(self.detection, "doTempLocalBackground"):
            self.detection.doTempLocalBackground = False
        if hasattr(self.deblend, "maxFootprintSize"):
            self.deblend.maxFootprintSize = 2000
        if hasattr(self.detection, "thresholdValue"):
            self.detection.thresholdValue = 5.0


def add_calibrated_fluxes(cat: Table, photoCalib) -> None:
    """Add ``<alg>_flux``, ``_fluxErr`` (nJy), ``_mag``, ``_magErr`` for every ``<alg>_instFlux`` column."""
    for col in [c for c in cat.colnames if c.endswith("_instFlux")]:
        base = col[: -len("_instFlux")]
        flux = np.asarray(cat[col], float)
        err_col = f"{base}_instFluxErr"
        err = np.asarray(cat[err_col], float) if err_col in cat.colnames else np.zeros(len(cat))
        f, fe = photoCalib.instflux_to_nanojansky(flux, err)
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)) + 31.4, np.nan)
            mag_err = np.where(f > 0, 2.5 / math.log(10) * fe / np.abs(f), np.nan)
        cat[f"{base}_flux"] = f
        cat[f"{base}_flux"].unit = "nJy"
        cat[f"{base}_fluxErr"] = fe
        cat[f"{base}_fluxErr"].unit = "nJy"
        cat[f"{base}_mag"] = mag
        cat[f"{base}_mag"].unit = "mag"
        cat[f"{base}_magErr"] = mag_err
        cat[f"{base}_magErr"].unit = "mag"


def make_match_tables(
    sourceCat: Table, refCat: Table, matches: Struct, matchMeta: dict
) -> tuple[Table, Table]:
    """Return ``(srcMatch, srcMatchFull)``: (first=ref id, second=src id, distance rad) and joined rows."""
    i_src, i_ref = np.asarray(matches.i_src, int), np.asarray(matches.i_ref, int)
    norm = Table()
    norm["first"] = np.asarray(refCat["id"], np.int64)[i_ref]
    norm["second"] = np.asarray(sourceCat["id"], np.int64)[i_src]
    norm["distance"] = np.asarray(matches.distance, float)
    norm["distance"].unit = "rad"
    norm.meta.update({k: v for k, v in matchMeta.items()})
    ref = refCat[i_ref]
    src = sourceCat[i_src]
    ref_t = Table([ref[c] for c in ref.colnames], names=[f"ref_{c}" for c in ref.colnames])
    src_cols = [c for c in src.colnames if src[c].ndim == 1]
    src_t = Table([src[c] for c in src_cols], names=[f"src_{c}" for c in src_cols])
    full = hstack([ref_t, src_t], metadata_conflicts="silent") if len(ref_t.colnames) else src_t
    full["distance"] = norm["distance"]
    full.meta.clear()
    full.meta.update(norm.meta)
    return norm, full


class CalibrateTask(Task):
    """Calibrate an exposure: detect, deblend, measure, astrometry, photometry (LSST CalibrateTask).

    Parameters
    ----------
    butler : `calexpress.butler.Butler`, optional
        Used to build the reference loaders when they are not given.
    astromRefObjLoader, photoRefObjLoader : `LoadIndexedReferenceObjectsTask`, optional
    icSourceSchema : ignored (LSST compatibility)
    """

    ConfigClass = CalibrateConfig
    _DefaultName = "calibrate"

    def __init__(
        self,
        butler: Any = None,
        astromRefObjLoader: Any = None,
        photoRefObjLoader: Any = None,
        icSourceSchema: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if astromRefObjLoader is None and butler is not None and self.config.doAstrometry:
            astromRefObjLoader = LoadIndexedReferenceObjectsTask(
                butler, config=self.config.astromRefObjLoader
            )
        if photoRefObjLoader is None and butler is not None and self.config.doPhotoCal:
            photoRefObjLoader = LoadIndexedReferenceObjectsTask(butler, config=self.config.photoRefObjLoader)
        self.astromRefObjLoader = astromRefObjLoader
        self.photoRefObjLoader = photoRefObjLoader
        self.makeSubtask("detection")
        if self.config.doDeblend:
            self.makeSubtask("deblend")
        if self.config.doSkySources:
            self.makeSubtask("skySources")
        self.makeSubtask("measurement")
        if self.config.doApCorr:
            self.makeSubtask("applyApCorr")
        self.makeSubtask("catalogCalculation")
        if self.config.doAstrometry:
            self.makeSubtask("astrometry", refObjLoader=astromRefObjLoader)
        if self.config.doPhotoCal:
            self.makeSubtask("photoCal")

    # ----------------------------------------------------------------------------------------------
    @timeMethod
    def run(
        self,
        exposure,
        exposureIdInfo: ExposureIdInfo | None = None,
        background=None,
        icSourceCat: Table | None = None,
    ) -> Struct:
        """Calibrate ``exposure`` in place.

        Returns
        -------
        result : `Struct`
            ``exposure``, ``sourceCat`` (`astropy.table.Table`), ``background`` (BackgroundList),
            ``astromMatches`` (Struct ``i_src``, ``i_ref``, ``distance``, or None), ``matchMeta``,
            ``photoCalib``, plus ``refCat``, ``srcMatch``, ``srcMatchFull``, ``calibOk``, ``failure``.

        Raises
        ------
        calexpress.task.TaskError
            Calibration failed (reason in the message, the log and ``exposure.metadata['CALIBERR']``)
            and ``doWriteUncalibratedOnFailure`` is False.
        """
        if exposureIdInfo is None:
            exposureIdInfo = ExposureIdInfo()
        md = exposure.metadata
        sourceCat = self._detect_and_measure(exposure, exposureIdInfo, background)
        if icSourceCat is not None and len(self.config.icSourceFieldsToCopy):
            self.copyIcSourceFields(icSourceCat, sourceCat)
        astromMatches = None
        matchMeta: dict = {}
        refCat = None
        photoCalib = None
        failure = None
        wcs_ok = False
        if self.config.doAstrometry:
            try:
                ares = self.astrometry.run(sourceCat, exposure)
                astromMatches, matchMeta, refCat = ares.matches, ares.matchMeta, ares.refCat
                _set(md, "ASTRMRMS", round(ares.rmsMas, 3), SUMMARY_KEYWORDS["ASTRMRMS"])
                _set(md, "ASTRNMAT", len(ares.matches.i_src), SUMMARY_KEYWORDS["ASTRNMAT"])
                wcs_ok = True
            except TaskError as exc:
                failure = str(exc)
                if self.config.requireAstrometry:
                    self._fail(exposure, failure)
                else:
                    self.log.warning(
                        "Unable to perform astrometric calibration (%s): attempting to proceed", failure
                    )
        if not wcs_ok and exposure.wcs is not None:
            x, y = centroids(sourceCat)
            set_sky_coords(sourceCat, exposure.wcs, x, y)
        if self.config.doPhotoCal and failure is None:
            try:
                photoCalib = self._photo_cal(exposure, sourceCat, refCat, astromMatches)
            except TaskError as exc:
                failure = str(exc)
                if self.config.requirePhotoCal:
                    self._fail(exposure, failure)
                else:
                    self.log.warning(
                        "Unable to perform photometric calibration (%s): attempting to proceed", failure
                    )
        if photoCalib is None:
            photoCalib = getattr(exposure, "photo_calib", None)
        else:
            exposure.photo_calib = photoCalib
        if photoCalib is not None:
            add_calibrated_fluxes(sourceCat, photoCalib)
        self._summary(exposure, sourceCat, background, icSourceCat, photoCalib)
        calib_ok = failure is None
        _set(md, "CALIB_OK", calib_ok, SUMMARY_KEYWORDS["CALIB_OK"])
        if failure:
            _set(md, "CALIBERR", failure[:68], SUMMARY_KEYWORDS["CALIBERR"])
        srcMatch = srcMatchFull = None
        if astromMatches is not None and refCat is not None and len(astromMatches.i_src):
            srcMatch, srcMatchFull = make_match_tables(sourceCat, refCat, astromMatches, matchMeta)
        return Struct(
            exposure=exposure,
            sourceCat=sourceCat,
            background=background,
            astromMatches=astromMatches,
            matchMeta=matchMeta,
            photoCalib=photoCalib,
            refCat=refCat,
            srcMatch=srcMatch,
            srcMatchFull=srcMatchFull,
            calibOk=calib_ok,
            failure=failure,
        )

    def _fail(self, exposure, reason: str) -> None:
        md = exposure.metadata
        _set(md, "CALIB_OK", False, SUMMARY_KEYWORDS["CALIB_OK"])
        _set(md, "CALIBERR", reason[:68], SUMMARY_KEYWORDS["CALIBERR"])
        self.metadata["failure"] = reason
        self.log.error("Calibration failed: %s", reason)
        if not self.config.doWriteUncalibratedOnFailure:
            raise TaskError(reason)

    # ----------------------------------------------------------------------------------------------
    def _detect_and_measure(self, exposure, exposureIdInfo: ExposureIdInfo, background) -> Table:
        det = self.detection.run(None, exposure, expId=exposureIdInfo)
        if background is not None and getattr(det, "background", None) is not None:
            bg = det.background
            if isinstance(bg, list | tuple) or hasattr(bg, "__iter__"):
                for comp in bg:
                    background.append(comp)
            else:
                background.append(bg)
        sourceCat = det.sources
        if self.config.doDeblend:
            self.deblend.run(exposure, sourceCat, exposureIdInfo=exposureIdInfo)
        if self.config.doSkySources:
            self.skySources.run(exposure, sourceCat, exposureIdInfo=exposureIdInfo)
        self.measurement.run(sourceCat, exposure, exposureId=exposureIdInfo.expId)
        if self.config.doApCorr and getattr(exposure, "ap_corr_map", None):
            self.applyApCorr.run(catalog=sourceCat, apCorrMap=exposure.ap_corr_map)
        self.catalogCalculation.run(sourceCat)
        n_child = np.asarray(sourceCat["deblend_nChild"]) if "deblend_nChild" in sourceCat.colnames else 0
        sky = np.asarray(sourceCat["sky_source"], bool) if "sky_source" in sourceCat.colnames else False
        sourceCat["detect_isPrimary"] = (np.zeros(len(sourceCat), int) + n_child == 0) & ~sky
        return sourceCat

    def copyIcSourceFields(self, icSourceCat: Table, sourceCat: Table) -> None:
        """Copy ``icSourceFieldsToCopy`` from icSrc to the closest src (deblend_nChild == 0) within
        ``matchRadiusPix``, and set ``calib_detected``."""
        ix, iy = centroids(icSourceCat)
        sx, sy = centroids(sourceCat)
        ok = np.isfinite(sx) & np.isfinite(sy)
        if "deblend_nChild" in sourceCat.colnames:
            ok &= np.asarray(sourceCat["deblend_nChild"]) == 0
        if "sky_source" in sourceCat.colnames:
            ok &= ~np.asarray(sourceCat["sky_source"], bool)
        cand = np.nonzero(ok)[0]
        i_ic, i_s, _ = match_xy(
            np.column_stack([ix, iy]), np.column_stack([sx[cand], sy[cand]]), self.config.matchRadiusPix
        )
        rows = cand[i_s]
        detected = np.zeros(len(sourceCat), bool)
        detected[rows] = True
        sourceCat["calib_detected"] = detected
        for name in self.config.icSourceFieldsToCopy:
            if name not in icSourceCat.colnames:
                self.log.warning("icSrc has no field %s to copy", name)
                continue
            values = np.zeros(len(sourceCat), dtype=icSourceCat[name].dtype)
            values[rows] = np.asarray(icSourceCat[name])[i_ic]
            sourceCat[name] = values
        self.log.info("Matched %d icSrc to src within %.1f px", len(rows), self.config.matchRadiusPix)

    def _photo_cal(self, exposure, sourceCat: Table, refCat: Table | None, astromMatches: Struct | None):
        cfg = self.config
        filterName = getattr(exposure, "filter", None)
        loader = self.photoRefObjLoader
        if loader is not None and (loader is not self.astromRefObjLoader or refCat is None):
            ny, nx = exposure.image.shape
            vi = getattr(exposure, "visit_info", None)
            epoch = (
                self.astrometry._epoch(exposure)
                if cfg.doAstrometry
                else (
                    float(vi.date.tai.mjd)
                    if vi is not None and getattr(vi, "date", None) is not None
                    else None
                )
            )
            res = loader.loadPixelBox((0, 0, nx, ny), exposure.wcs, filterName, epoch)
            prefCat, fluxField = res.refCat, res.fluxField
        elif refCat is not None:
            prefCat = refCat
            band = loader._resolve_band(filterName) if loader is not None else filterName
            fluxField = f"{band}_flux"
        else:
            raise TaskError("photometric calibration: no reference catalog loader")
        if len(prefCat) == 0:
            raise TaskError("photometric calibration: no reference stars in the field of view")
        matches = direct_match(sourceCat, prefCat, self.photoCal.config.matchRadius)
        if "deblend_nChild" in sourceCat.colnames:
            keep = np.asarray(sourceCat["deblend_nChild"])[matches.i_src] == 0
            matches = Struct(
                i_src=matches.i_src[keep], i_ref=matches.i_ref[keep], distance=matches.distance[keep]
            )
        pres = self.photoCal.run(
            exposure, sourceCat, matches, prefCat, filterName, fluxField,
            photoCatName=loader.config.ref_dataset_name if loader is not None else None,
        )
        used = pres.used
        sourceCat["calib_photometry_used"] = used
        sourceCat["calib_photometry_reserved"] = np.zeros(len(sourceCat), bool)
        exptime = self._exptime(exposure)
        magzero = pres.zp - 2.5 * math.log10(exptime) + pres.apToTotal if exptime > 0 else pres.zp
        md = exposure.metadata
        _set(md, "MAGZERO", round(magzero, 5), SUMMARY_KEYWORDS["MAGZERO"])
        _set(md, "MAGZERO_RMS", round(pres.sigma, 5), SUMMARY_KEYWORDS["MAGZERO_RMS"])
        _set(md, "MAGZERO_NOBJ", int(pres.ngood), SUMMARY_KEYWORDS["MAGZERO_NOBJ"])
        _set(md, "MAGZERO_APCORR", round(pres.apToTotal, 5), "[mag] aperture-to-total term in MAGZERO")
        for i, c in enumerate(pres.colorterm):
            _set(md, f"COLORTERM{i + 1}", float(c), f"colour term c{i}")
        self.metadata.update({"MAGZERO": magzero, "MAGZERO_RMS": pres.sigma, "MAGZERO_NOBJ": pres.ngood})
        return pres.photoCalib

    @staticmethod
    def _exptime(exposure) -> float:
        vi = getattr(exposure, "visit_info", None)
        t = getattr(vi, "exposure_time", None) if vi is not None else None
        if t is None:
            t = exposure.metadata.get("EXPTIME", 0.0)
        return float(t or 0.0)

    def _summary(self, exposure, sourceCat: Table, background, icSourceCat, photoCalib) -> None:
        md = exposure.metadata
        ny, nx = exposure.image.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        psf = getattr(exposure, "psf", None)
        pixscale = float("nan")
        if exposure.wcs is not None:
            pixscale = float(np.sqrt(abs(np.linalg.det(exposure.wcs.pixel_scale_matrix)))) * 3600.0
        neff = float("nan")
        if psf is not None:
            try:
                ixx, iyy, ixy = psf.compute_shape(cx, cy)
                sigma = float((ixx * iyy - ixy**2) ** 0.25)
                ell = float(math.sqrt((ixx - iyy) ** 2 + 4 * ixy**2) / (ixx + iyy))
                _set(md, "PSFSIGMA", round(sigma, 4), SUMMARY_KEYWORDS["PSFSIGMA"])
                _set(md, "PSFFWHM", round(2.3548 * sigma * pixscale, 4), SUMMARY_KEYWORDS["PSFFWHM"])
                _set(md, "PSFELLIP", round(ell, 4), SUMMARY_KEYWORDS["PSFELLIP"])
                neff = 4.0 * math.pi * sigma**2  # effective area of a Gaussian of this size (LSST m5)
            except Exception as exc:  # a PSF model that cannot be evaluated must not lose the calexp
                self.log.warning("PSF summary failed: %s", exc)
        if background is not None:
            try:
                bg = background.get_image((ny, nx)) if hasattr(background, "get_image") else None
                if bg is not None:
                    _set(md, "SKYLEVEL", round(float(np.mean(bg)), 3), SUMMARY_KEYWORDS["SKYLEVEL"])
            except Exception as exc:
                self.log.warning("background summary failed: %s", exc)
        img = np.asarray(exposure.image)[::4, ::4]
        msk = np.asarray(exposure.mask)[::4, ::4] if exposure.mask is not None else None
        good = np.isfinite(img)
        if msk is not None:
            good &= (msk & exposure.get_plane_bitmask("BAD", "SAT", "DETECTED", "EDGE", "NO_DATA")) == 0
        vals = img[good]
        noise = float("nan")
        if vals.size > 100:
            from astropy.stats import sigma_clipped_stats

            _, _, noise = sigma_clipped_stats(vals, sigma=3.0, maxiters=5)
            _set(md, "SKYNOISE", round(float(noise), 4), SUMMARY_KEYWORDS["SKYNOISE"])
        if icSourceCat is not None and "calib_psf_used" in icSourceCat.colnames:
            _set(md, "NPSFSTAR", int(np.sum(icSourceCat["calib_psf_used"])), SUMMARY_KEYWORDS["NPSFSTAR"])
        if photoCalib is not None and np.isfinite(noise) and np.isfinite(neff) and noise > 0:
            flux5 = 5.0 * noise * math.sqrt(neff)
            apcorr = float(md.get("MAGZERO_APCORR", 0.0) or 0.0)
            limmag = float(photoCalib.instflux_to_magnitude(flux5)) + apcorr
            _set(md, "LIMMAG5", round(limmag, 4), SUMMARY_KEYWORDS["LIMMAG5"])

    # ----------------------------------------------------------------------------------------------
    def runDataRef(self, dataRef, exposure=None, background=None, icSourceCat=None, doUnpersist: bool = True):
        """Read icExp/icExpBackground/icSrc (if ``doUnpersist``), calibrate and write the outputs.

        Writes ``calexp``, ``calexpBackground`` (``doWriteExposure``), ``src`` (``doWrite``),
        ``srcMatch`` (``doWriteMatches``) and ``srcMatchFull`` (``doWriteMatchesDenormalized``).  With
        ``doWriteUncalibratedOnFailure`` a failed calibration still writes the calexp (``CALIB_OK=False``).
        """
        if doUnpersist:
            if exposure is None:
                exposure = dataRef.get("icExp")
            if background is None:
                background = dataRef.get("icExpBackground")
            if icSourceCat is None and dataRef.datasetExists("icSrc"):
                icSourceCat = dataRef.get("icSrc")
        if exposure is None:
            raise TaskError("runDataRef: no exposure given and doUnpersist is False")
        exp_id = ExposureIdInfo.from_data_ref(dataRef)
        result = self.run(exposure, exposureIdInfo=exp_id, background=background, icSourceCat=icSourceCat)
        if self.config.doWrite:
            self.writeOutputs(dataRef, result)
        return result

    def writeOutputs(self, dataRef, result: Struct) -> None:
        """Write the datasets of a `run` result through ``dataRef``."""
        cfg = self.config
        if cfg.doWriteExposure:
            dataRef.put(result.exposure, "calexp")
            if result.background is not None:
                dataRef.put(result.background, "calexpBackground")
        cat = result.sourceCat
        for name in [c for c in cat.colnames if cat[c].dtype == object]:
            cat.remove_column(name)
        dataRef.put(cat, "src")
        if cfg.doWriteMatches and result.srcMatch is not None:
            dataRef.put(result.srcMatch, "srcMatch")
        if cfg.doWriteMatchesDenormalized and result.srcMatchFull is not None:
            dataRef.put(result.srcMatchFull, "srcMatchFull")
