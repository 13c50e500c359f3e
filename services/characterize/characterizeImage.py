"""CharacterizeImageTask: background, PSF, cosmic rays, detection, measurement, aperture corrections.

Flow (LSST ``pipe_tasks/characterizeImage.py`` 21.0.0; ``lsst_processccd.md`` section 2.1):

1. if ``doMeasurePsf`` is False and there is no PSF, install a simple (Gaussian) PSF;
2. subtract the initial background (``background``), starting the `BackgroundList`;
3. ``psfIterations`` times: install a Gaussian PSF (``useSimplePsf``: FWHM ``installSimplePsf.fwhm`` on the
   first pass, then the determinant radius of the current PSF), find cosmic rays keeping their pixels
   (``repair.run(keepCRs=True)``), detect (background re-estimate appended to the list), measure, select
   stars and fit the PSF (``measurePsf``);
4. find the cosmic rays again with the final PSF and interpolate over them (``repair.run()``);
5. re-measure the same footprints with the final PSF;
6. ``doApCorr``: measure the aperture-correction map, store it on the exposure, apply it;
7. catalog calculation (extendedness, footprint area).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from astropy.table import Column, Table
from calexpress.background import BackgroundList
from calexpress.catalog_calc import CatalogCalculationTask
from calexpress.config import Config, ConfigField, ConfigurableField, Field, RangeField
from calexpress.detection import SourceDetectionTask
from calexpress.measurement import CHARIMAGE_PLUGINS, SingleFrameMeasurementTask
from calexpress.psf import GaussianPsf
from calexpress.task import ExposureIdInfo, Struct, Task, TaskError, timeMethod

from .apcorr import ApplyApCorrTask, MeasureApCorrTask
from .cosmic_rays import RepairTask
from .measure_psf import MeasurePsfTask
from .subtract_background import SubtractBackgroundTask

__all__ = [
    "CharacterizeImageConfig",
    "CharacterizeImageTask",
    "InstallGaussianPsfConfig",
]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class InstallGaussianPsfConfig(Config):
    """LSST ``InstallGaussianPsfConfig``."""

    fwhm = Field(dtype=float, default=1.5 * _FWHM_PER_SIGMA, doc="FWHM of the Gaussian PSF (pixels)")
    width = Field(dtype=int, default=11, doc="Width and height of the PSF image (pixels, odd)")


class CharacterizeImageConfig(Config):
    """Configuration of `CharacterizeImageTask` (LSST names and defaults)."""

    doMeasurePsf = Field(dtype=bool, default=True, doc="Measure the PSF (else use/install a simple one)")
    doWrite = Field(dtype=bool, default=True, doc="Write icSrc")
    doWriteExposure = Field(dtype=bool, default=True, doc="Write icExp and icExpBackground")
    psfIterations = RangeField(dtype=int, default=2, min=1, doc="Passes of detect / measure / fit PSF")
    background = ConfigurableField(target=SubtractBackgroundTask, doc="Initial background subtraction")
    detection = ConfigurableField(target=SourceDetectionTask, doc="Source detection")
    doDeblend = Field(
        dtype=bool, default=False, doc="Deblend (not supported in charImage, as LSST's default)"
    )
    measurement = ConfigurableField(target=SingleFrameMeasurementTask, doc="Source measurement")
    doApCorr = Field(dtype=bool, default=True, doc="Measure and apply aperture corrections")
    measureApCorr = ConfigurableField(target=MeasureApCorrTask, doc="Measure aperture corrections")
    applyApCorr = ConfigurableField(target=ApplyApCorrTask, doc="Apply aperture corrections")
    catalogCalculation = ConfigurableField(target=CatalogCalculationTask, doc="Catalog calculation")
    useSimplePsf = Field(dtype=bool, default=True, doc="Install a Gaussian PSF before each iteration")
    installSimplePsf = ConfigField(dtype=InstallGaussianPsfConfig, doc="Initial Gaussian PSF")
    measurePsf = ConfigurableField(target=MeasurePsfTask, doc="Star selection and PSF determination")
    repair = ConfigurableField(target=RepairTask, doc="Cosmic-ray repair")
    requireCrForPsf = Field(dtype=bool, default=True, doc="Fail if CR detection fails during the PSF loop")
    doRemoveCrSources = Field(
        dtype=bool,
        default=True,
        doc="calexpress: drop sources touching a cosmic ray whose PSF-flux S/N after the "
        "CR repair is below crSourceSnrFraction x the detection include threshold "
        "(thresholdValue x includeThresholdMultiplier): the CR itself was detected",
    )
    crSourceSnrFraction = Field(dtype=float, default=0.5, doc="See doRemoveCrSources")
    checkUnitsParseStrict = Field(dtype=str, default="raise", doc="Kept for LSST compatibility (unused)")

    def setDefaults(self) -> None:
        super().setDefaults()
        self.detection.thresholdValue = 5.0
        self.detection.includeThresholdMultiplier = 10.0
        self.detection.doTempLocalBackground = False
        self.measurement.plugins = list(CHARIMAGE_PLUGINS)

    def validate(self) -> None:
        super().validate()
        if self.doApCorr and not self.measurePsf:
            raise ValueError("doApCorr requires measurePsf")


class CharacterizeImageTask(Task):
    """Characterise an ISR-corrected exposure: background, PSF, cosmic rays, bright sources, ap. corr."""

    ConfigClass = CharacterizeImageConfig
    _DefaultName = "charImage"

    def __init__(
        self, butler: Any = None, refObjLoader: Any = None, schema: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        for name in (
            "background",
            "detection",
            "measurement",
            "measurePsf",
            "repair",
            "measureApCorr",
            "applyApCorr",
            "catalogCalculation",
        ):
            self.makeSubtask(name)
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}  # CPU (process) seconds per step

    # ------------------------------------------------------------------------------------------
    @timeMethod
    def runDataRef(
        self, dataRef: Any, exposure: Any = None, background: Any = None, doUnpersist: bool = True
    ) -> Struct:
        """Characterise the exposure of ``dataRef``; write ``icSrc`` (and ``icExp``, ``icExpBackground``).

        Parameters
        ----------
        dataRef : `calexpress.butler.ButlerDataRef`
        exposure : `calexpress.exposure.Exposure`, optional
            Default (with ``doUnpersist``): ``dataRef.get("postISRCCD")``.
        background : `calexpress.background.BackgroundList`, optional
        doUnpersist : `bool`
            Read the exposure from the repository when it is not given.
        """
        if doUnpersist:
            if exposure is not None or background is not None:
                raise RuntimeError("doUnpersist true; exposure and background must be None")
            exposure = dataRef.get("postISRCCD")
        elif exposure is None:
            raise RuntimeError("No exposure supplied")
        idinfo = ExposureIdInfo.from_data_ref(dataRef)
        res = self.run(exposure, exposureIdInfo=idinfo, background=background)
        if self.config.doWrite:
            dataRef.put(res.sourceCat, "icSrc")
            if self.config.doWriteExposure:
                dataRef.put(res.exposure, "icExp")
                dataRef.put(res.background, "icExpBackground")
        return res

    @timeMethod
    def run(
        self,
        exposure: Any,
        exposureIdInfo: ExposureIdInfo | None = None,
        background: BackgroundList | None = None,
    ) -> Struct:
        """Characterise ``exposure`` in place (see the module docstring).

        Returns
        -------
        `Struct` with ``exposure``, ``sourceCat`` (icSrc, `astropy.table.Table`), ``background``
        (`BackgroundList`), ``psfCellSet`` (None) and ``timings`` (seconds per step).

        Raises
        ------
        TaskError
            If the PSF cannot be measured (no stars), too many CR pixels, ...
        """
        cfg = self.config
        t = self.timings = {}
        tc = self.cpu_timings = {}
        if exposureIdInfo is None:
            exposureIdInfo = ExposureIdInfo()
        for plane in ("CR", "INTRP", "DETECTED", "DETECTED_NEGATIVE", "EDGE"):
            exposure.add_mask_plane(plane)
        if not cfg.doMeasurePsf and exposure.psf is None:
            self.log.info("CharacterizeImageTask initialized with 'simple' PSF.")
            self.installSimplePsf(exposure)
        if background is None:
            background = BackgroundList()

        t0, c0 = time.perf_counter(), time.process_time()
        self.background.run(exposure, background)
        t["background"] = time.perf_counter() - t0
        tc["background"] = time.process_time() - c0

        dme = None
        for i in range(cfg.psfIterations):
            dme = self.detectMeasureAndEstimatePsf(exposure, exposureIdInfo, background)
            psf = exposure.psf
            sigma = psf.determinant_radius()
            median_bg = float(sum(np.nanmedian(c.values) for c in background))
            self.log.info(
                "iter %d; PSF sigma=%0.2f, dimensions=%dx%d; median background=%0.2f",
                i + 1,
                sigma,
                psf.size,
                psf.size,
                median_bg,
            )

        t0, c0 = time.perf_counter(), time.process_time()
        crRes = self.repair.run(exposure=exposure)
        t["repair_final"] = time.perf_counter() - t0
        tc["repair_final"] = time.process_time() - c0

        catalog = dme.sourceCat
        t0, c0 = time.perf_counter(), time.process_time()
        self.measurement.run(catalog, exposure, exposureId=exposureIdInfo.expId)
        t["measurement_final"] = time.perf_counter() - t0
        tc["measurement_final"] = time.process_time() - c0

        if cfg.doRemoveCrSources:
            catalog = self._remove_cr_sources(catalog)

        t0, c0 = time.perf_counter(), time.process_time()
        if cfg.doApCorr:
            apRes = self.measureApCorr.run(exposure, catalog)
            exposure.ap_corr_map = dict(apRes.apCorrMap)
            self.applyApCorr.run(catalog, exposure.ap_corr_map)
        t["apcorr"] = time.perf_counter() - t0
        tc["apcorr"] = time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        self.catalogCalculation.run(catalog)
        t["catalogCalculation"] = time.perf_counter() - t0
        tc["catalogCalculation"] = time.process_time() - c0
        catalog = _icsrc_table(catalog)

        self._set_metadata(exposure, catalog, crRes)
        return Struct(
            exposure=exposure,
            sourceCat=catalog,
            background=background,
            psfCellSet=None,
            timings=dict(t),
            cpu_timings=dict(tc),
        )

    @timeMethod
    def detectMeasureAndEstimatePsf(
        self, exposure: Any, exposureIdInfo: ExposureIdInfo, background: BackgroundList
    ) -> Struct:
        """One pass of simple PSF → CR finding → detection → measurement → PSF determination."""
        cfg = self.config
        t = self.timings
        tc = self.cpu_timings
        if cfg.useSimplePsf or exposure.psf is None:
            self.installSimplePsf(exposure)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            self.repair.run(exposure=exposure, keepCRs=True)
        except TaskError as exc:
            if cfg.requireCrForPsf:
                raise
            self.log.warning("Unable to perform cosmic ray detection (%s); proceeding", exc)
        t["repair"] = t.get("repair", 0.0) + time.perf_counter() - t0
        tc["repair"] = tc.get("repair", 0.0) + time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        det = self.detection.run(None, exposure, doSmooth=True, expId=exposureIdInfo)
        if det.background is not None:
            background.append(det.background)
        catalog = det.sources
        t["detection"] = t.get("detection", 0.0) + time.perf_counter() - t0
        tc["detection"] = tc.get("detection", 0.0) + time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        self.measurement.run(catalog, exposure, exposureId=exposureIdInfo.expId)
        t["measurement"] = t.get("measurement", 0.0) + time.perf_counter() - t0
        tc["measurement"] = tc.get("measurement", 0.0) + time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        psfRes = None
        if cfg.doMeasurePsf:
            psfRes = self.measurePsf.run(exposure, catalog, expId=exposureIdInfo.expId)
            exposure.psf = psfRes.psf
        t["measurePsf"] = t.get("measurePsf", 0.0) + time.perf_counter() - t0
        tc["measurePsf"] = tc.get("measurePsf", 0.0) + time.process_time() - c0
        return Struct(psfCellSet=None, sourceCat=catalog, psfRes=psfRes)

    def _remove_cr_sources(self, catalog: Table) -> Table:
        """Drop detections that were cosmic rays (centre on a CR and nothing left after the repair)."""
        if "base_PixelFlags_flag_cr" not in catalog.colnames or len(catalog) == 0:
            return catalog
        flux = np.asarray(catalog["base_PsfFlux_instFlux"], float)
        err = np.asarray(catalog["base_PsfFlux_instFluxErr"], float)
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = flux / err
        det = self.config.detection
        min_snr = self.config.crSourceSnrFraction * det.thresholdValue * det.includeThresholdMultiplier
        is_cr = np.asarray(catalog["base_PixelFlags_flag_cr"], bool) & ~(snr >= min_snr)
        if is_cr.any():
            fps = getattr(catalog, "footprints", None)
            catalog = catalog[~is_cr]
            if fps is not None:
                catalog.footprints = fps
            self.log.info("Removed %d detections of cosmic rays", int(is_cr.sum()))
        self.metadata["numCrSourcesRemoved"] = int(is_cr.sum())
        return catalog

    def installSimplePsf(self, exposure: Any) -> None:
        """Install a Gaussian PSF: the configured FWHM, or the current PSF's determinant radius and size."""
        cfg = self.config.installSimplePsf
        if exposure.psf is None:
            sigma = cfg.fwhm / _FWHM_PER_SIGMA
            size = cfg.width
        else:
            sigma = float(exposure.psf.determinant_radius())
            size = int(exposure.psf.size)
        exposure.psf = GaussianPsf(sigma, size)

    def _set_metadata(self, exposure: Any, catalog: Table, crRes: Struct) -> None:
        psf = exposure.psf
        ixx, iyy, ixy = psf.compute_shape()
        tr = ixx + iyy
        e1 = (ixx - iyy) / tr if tr > 0 else float("nan")
        e2 = 2 * ixy / tr if tr > 0 else float("nan")
        sigma = float((ixx * iyy - ixy * ixy) ** 0.25)
        nused = int(np.sum(catalog["calib_psf_used"])) if "calib_psf_used" in catalog.colnames else 0
        self.metadata.update(
            numPsfStars=nused,
            psfSigma=sigma,
            psfFwhm=sigma * _FWHM_PER_SIGMA,
            psfE1=float(e1),
            psfE2=float(e2),
            numCosmicRays=int(crRes.nCr),
            numCosmicRayPixels=int(crRes.nPixels),
            numSources=len(catalog),
        )
        self.log.info(
            "PSF from %d stars: FWHM %.3f px, e1 %.4f, e2 %.4f; %d cosmic rays; %d sources",
            nused,
            sigma * _FWHM_PER_SIGMA,
            e1,
            e2,
            crRes.nCr,
            len(catalog),
        )


def _icsrc_table(catalog: Table) -> Table:
    """Drop detection bookkeeping not in LSST's icSrc schema but keep footprints attached."""
    fps = getattr(catalog, "footprints", None)
    for col in ("footprint",):
        if col in catalog.colnames and fps is None:
            catalog.remove_column(col)
    if "calib_psf_used" not in catalog.colnames:
        for name in ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved"):
            catalog[name] = Column(np.zeros(len(catalog), bool))
    return catalog
