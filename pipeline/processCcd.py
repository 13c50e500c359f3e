"""ProcessCcdTask: ISR, image characterization and calibration of one CCD exposure.

The composition of the three stages, as LSST's ``lsst.pipe.tasks.processCcd``:

1. ``isr`` (`calexpress.isr.IsrTask`) removes the instrument signature;
2. ``charImage`` (`calexpress.characterize.CharacterizeImageTask`) models the
   background and the PSF, repairs cosmic rays and measures bright sources
   (``icSrc``);
3. if ``doCalibrate``, ``calibrate`` (`calexpress.calibrate.CalibrateTask`)
   detects and measures deeply, fits the WCS and the zero point (``calexp``,
   ``calexpBackground``, ``src``, ``srcMatch``).

Each sub-task is retargetable (``config.isr.retarget(MyIsrTask)``) and callable
on its own with the same result as inside ProcessCcdTask.
"""

from __future__ import annotations

from typing import Any

from calexpress.calibrate import CalibrateTask
from calexpress.characterize import CharacterizeImageTask
from calexpress.config import Config, ConfigurableField, Field
from calexpress.isr import IsrTask
from calexpress.task import ExposureIdInfo, Struct, Task, timeMethod

__all__ = ["ProcessCcdConfig", "ProcessCcdTask", "exposure_id_info"]


class ProcessCcdConfig(Config):
    """Configuration of `ProcessCcdTask`."""

    isr = ConfigurableField(target=IsrTask, doc="Task to perform instrumental signature removal or load "
                            "a post-ISR image; ISR consists of: assembling an exposure from amplifiers, "
                            "removing the overscan, bias, dark and flat, masking and interpolating defects")
    charImage = ConfigurableField(
        target=CharacterizeImageTask,
        doc="Task to characterize a science exposure: background, PSF, cosmic rays, aperture correction, "
        "bright sources",
    )
    doCalibrate = Field(dtype=bool, default=True, doc="Perform calibration?")
    calibrate = ConfigurableField(target=CalibrateTask, doc="Task to perform astrometric and photometric "
                                  "calibration: deep detection and measurement, WCS and zero point")

    def setDefaults(self) -> None:
        super().setDefaults()
        # As in LSST: processCcd writes neither postISRCCD nor icExp/icExpBackground by default.
        self.isr.doWrite = False
        self.charImage.doWriteExposure = False


def exposure_id_info(dataRef: Any) -> ExposureIdInfo:
    """Return the `ExposureIdInfo` of a data reference (source ids derive from it)."""
    return ExposureIdInfo.from_data_ref(dataRef)


class ProcessCcdTask(Task):
    """Run ISR, CharacterizeImage and (optionally) Calibrate on one CCD.

    Parameters
    ----------
    butler : `calexpress.Butler`, optional
        Data repository, passed to the sub-tasks that need one (e.g. to build
        reference-catalog loaders when none is given).
    psfRefObjLoader, astromRefObjLoader, photoRefObjLoader : optional
        Reference-object loaders for the PSF (unused, as in LSST), astrometric
        and photometric calibration.
    **kwargs
        Passed to `calexpress.task.Task`.
    """

    ConfigClass = ProcessCcdConfig
    _DefaultName = "processCcd"

    def __init__(
        self,
        butler: Any = None,
        psfRefObjLoader: Any = None,
        astromRefObjLoader: Any = None,
        photoRefObjLoader: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.makeSubtask("isr")
        self.makeSubtask("charImage")
        if self.config.doCalibrate:
            self.makeSubtask(
                "calibrate",
                butler=butler,
                astromRefObjLoader=astromRefObjLoader,
                photoRefObjLoader=photoRefObjLoader,
            )

    @timeMethod
    def runDataRef(self, sensorRef: Any) -> Struct:
        """Process one CCD through the data repository.

        Parameters
        ----------
        sensorRef : `calexpress.butler.ButlerDataRef`
            Data reference of the raw; outputs are written through it.

        Returns
        -------
        result : `calexpress.task.Struct`
            ``charRes``, ``calibRes`` (None without calibration), ``exposure``
            and ``background``.
        """
        self.log.info("Processing %s", sensorRef.dataId)
        exposure = self.isr.runDataRef(sensorRef).exposure
        charRes = self.charImage.runDataRef(dataRef=sensorRef, exposure=exposure, doUnpersist=False)
        exposure = charRes.exposure
        calibRes = None
        if self.config.doCalibrate:
            calibRes = self.calibrate.runDataRef(
                dataRef=sensorRef,
                exposure=charRes.exposure,
                background=charRes.background,
                doUnpersist=False,
                icSourceCat=charRes.sourceCat,
            )
        return Struct(
            charRes=charRes,
            calibRes=calibRes,
            exposure=exposure,
            background=calibRes.background if calibRes is not None else charRes.background,
        )

    @timeMethod
    def run(self, ccdExposure: Any, exposureIdInfo: ExposureIdInfo | None = None, **isrInputs: Any) -> Struct:
        """Process one CCD in memory, with no data repository.

        Parameters
        ----------
        ccdExposure : `calexpress.Exposure`
            The raw exposure (as read by ``camera.read_raw``).
        exposureIdInfo : `ExposureIdInfo`, optional
            Source-id information.
        **isrInputs
            Calibration products for `IsrTask.run` (``bias``, ``dark``, ``flat``,
            ``defects``, ``linearizer``, ``crosstalk``, ...).

        Returns
        -------
        result : `calexpress.task.Struct`
            As `runDataRef`.
        """
        exposure = self.isr.run(ccdExposure, **isrInputs).exposure
        charRes = self.charImage.run(exposure, exposureIdInfo=exposureIdInfo)
        calibRes = None
        if self.config.doCalibrate:
            calibRes = self.calibrate.run(
                charRes.exposure,
                exposureIdInfo=exposureIdInfo,
                background=charRes.background,
                icSourceCat=charRes.sourceCat,
            )
        return Struct(
            charRes=charRes,
            calibRes=calibRes,
            exposure=calibRes.exposure if calibRes is not None else charRes.exposure,
            background=calibRes.background if calibRes is not None else charRes.background,
        )
