"""``IsrTask``: instrument signature removal (after LSST ``lsst.ip.isr.IsrTask``, release 21.0.0).

Turns a raw `calexpress.exposure.Exposure` (untrimmed, ADU) into a post-ISR exposure in electrons with
variance and mask planes, for any camera described by a YAML file.  Steps, in order (each switchable):

1. int -> float32; per-amp saturation (SAT) and suspect (SUSPECT) masking on the raw data pixels;
2. serial overscan per amp (``overscan.fitType``: MEDIAN, MEAN, MEANCLIP, MEDIAN_PER_ROW, POLY, CHEB, LEG;
   leading/trailing columns skippable), then parallel overscan (``doParallelOverscan``);
3. crosstalk before assembly (``doCrosstalkBeforeAssemble``), in each amplifier's raw readout order;
4. assembly (trim, flips);
5. bias; linearity (per amp, ADU); variance = signal [e-] + read noise^2 (before dark, as LSST);
   crosstalk after assembly (if not before); dark scaled by dark time; gain -> electrons;
6. flat (variance / flat^2, plus the flat's own variance when it has one);
7. defects (BAD), vignetting (VIGNETTED, NO_DATA), edge SUSPECT, NaN (UNMASKEDNAN);
8. widen saturation trails; grow SAT; interpolate over SAT/BAD/UNMASKEDNAN along rows (INTRP);
9. rough PhotoCalib from ``fluxMag0T1`` and the exposure time; QA metadata (overscan level and noise
   per amp, sky level and noise).

The raw exposure passed to `IsrTask.run` is modified in place (its image is overscan-subtracted): pass a
clone to keep it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from astropy.io import fits
from calexpress.calibs import CrosstalkCalib, Defects, Linearizer
from calexpress.config import ChoiceField, ConfigField, DictField, Field, ListField, apply_overrides
from calexpress.config import Config as _Config
from calexpress.exposure import Exposure
from calexpress.photocalib import PhotoCalib
from calexpress.stats import clipped_stats
from calexpress.task import Struct, Task, TaskError, timeMethod

from . import isrFunctions as fn
from .overscan import OverscanConfig, fit_overscan

__all__ = ["IsrTask", "IsrTaskConfig", "apply_camera_overrides"]


class IsrTaskConfig(_Config):
    """Configuration of `IsrTask` (LSST names and defaults where LSST has the field)."""

    datasetType = Field(dtype=str, doc="Dataset type of the input", default="raw")
    biasDataProductName = Field(dtype=str, doc="Dataset type of the bias", default="bias")
    darkDataProductName = Field(dtype=str, doc="Dataset type of the dark", default="dark")
    flatDataProductName = Field(dtype=str, doc="Dataset type of the flat", default="flat")
    doConvertIntToFloat = Field(dtype=bool, doc="Convert an integer image to float32", default=True)
    doSaturation = Field(dtype=bool, doc="Mask saturated pixels (raw >= amp saturation)", default=True)
    saturatedMaskName = Field(dtype=str, doc="Mask plane of saturated pixels", default="SAT")
    saturation = Field(
        dtype=float, doc="Saturation level [ADU] overriding the camera's when finite", default=float("nan")
    )
    growSaturationFootprintSize = Field(
        dtype=int, doc="Grow SAT by this many pixels before interpolating", default=1
    )
    doSuspect = Field(dtype=bool, doc="Mask pixels above the amp suspect level", default=False)
    suspectMaskName = Field(dtype=str, doc="Mask plane of suspect pixels", default="SUSPECT")
    numEdgeSuspect = Field(dtype=int, doc="Mask this many pixels at the detector edge SUSPECT", default=0)
    doSetBadRegions = Field(
        dtype=bool, doc="Set BAD, non-interpolated pixels to the image median", default=True
    )
    badStatistic = ChoiceField(
        dtype=str,
        doc="Statistic for doSetBadRegions (LSST uses MEDIAN anyway)",
        default="MEANCLIP",
        allowed={"MEANCLIP": "clipped mean", "MEDIAN": "median"},
    )
    doOverscan = Field(dtype=bool, doc="Subtract the serial overscan", default=True)
    overscan = ConfigField(dtype=OverscanConfig, doc="Overscan fit")
    overscanNumLeadingColumnsToSkip = Field(
        dtype=int, doc="Overscan columns to skip next to the data", default=0
    )
    overscanNumTrailingColumnsToSkip = Field(
        dtype=int, doc="Overscan columns to skip at the far end", default=0
    )
    overscanMaxDev = Field(
        dtype=float, doc="Ignore overscan pixels further than this from the median [ADU]", default=1000.0
    )
    doParallelOverscan = Field(dtype=bool, doc="Subtract the parallel overscan per column", default=False)
    doAssembleCcd = Field(dtype=bool, doc="Assemble the amplifiers into the detector", default=True)
    doBias = Field(dtype=bool, doc="Subtract the bias", default=True)
    doVariance = Field(dtype=bool, doc="Compute the variance plane", default=True)
    gain = Field(dtype=float, doc="Gain [e-/ADU] overriding the camera's when finite", default=float("nan"))
    readNoise = Field(dtype=float, doc="Read noise [e-] overriding the camera's when > 0", default=0.0)
    doEmpiricalReadNoise = Field(
        dtype=bool, doc="Read noise from the overscan's clipped noise", default=False
    )
    doLinearize = Field(dtype=bool, doc="Correct non-linearity", default=True)
    doCrosstalk = Field(dtype=bool, doc="Correct crosstalk", default=False)
    doCrosstalkBeforeAssemble = Field(dtype=bool, doc="Correct crosstalk before assembly", default=False)
    doDefect = Field(dtype=bool, doc="Mask defects BAD", default=True)
    doNanMasking = Field(dtype=bool, doc="Mask NaN pixels UNMASKEDNAN", default=True)
    doWidenSaturationTrails = Field(dtype=bool, doc="Widen wide saturated runs as LSST does", default=True)
    doDark = Field(dtype=bool, doc="Subtract the dark scaled by dark time", default=True)
    doFlat = Field(dtype=bool, doc="Divide by the flat", default=True)
    flatScalingType = ChoiceField(
        dtype=str,
        doc="How to scale the flat",
        default="USER",
        allowed={"USER": "flatUserScale", "MEAN": "flat mean", "MEDIAN": "flat median"},
    )
    flatUserScale = Field(dtype=float, doc="Scale for flatScalingType USER", default=1.0)
    doApplyGains = Field(
        dtype=bool, doc="Kept for LSST compatibility: gains are always applied (electrons)", default=False
    )
    normalizeGains = Field(dtype=bool, doc="Scale amps to a common median (with doApplyGains)", default=False)
    doVignette = Field(
        dtype=bool, doc="Mask the camera's vignetted polygons VIGNETTED and NO_DATA", default=False
    )
    doInterpolate = Field(dtype=bool, doc="Interpolate over maskListToInterpolate", default=True)
    doSaturationInterpolation = Field(dtype=bool, doc="Interpolate over SAT", default=True)
    doNanInterpolation = Field(dtype=bool, doc="Interpolate over UNMASKEDNAN", default=True)
    maskListToInterpolate = ListField(
        dtype=str, doc="Mask planes to interpolate over", default=["SAT", "BAD", "UNMASKEDNAN"]
    )
    interpolationWidth = Field(
        dtype=int, doc="Good pixels averaged on each side when interpolating", default=2
    )
    fwhm = Field(dtype=float, doc="FWHM of the interpolation PSF (unused: linear interpolation)", default=1.0)
    fluxMag0T1 = DictField(
        keytype=str,
        itemtype=float,
        doc="Counts of a 0-mag source in 1 s, per filter",
        default={"Unknown": 10 ** (0.4 * 28.0)},
    )
    defaultFluxMag0T1 = Field(
        dtype=float, doc="fluxMag0T1 for filters not in the dict", default=10 ** (0.4 * 28.0)
    )
    doMeasureBackground = Field(
        dtype=bool, doc="Sky level and noise (SKYLEVEL, SKYSIGMA) in the metadata", default=True
    )
    expectWcs = Field(dtype=bool, doc="Warn if the exposure has no WCS", default=True)
    doWrite = Field(dtype=bool, doc="Write postISRCCD in runDataRef", default=True)


def apply_camera_overrides(config: IsrTaskConfig, camera) -> IsrTaskConfig:
    """Apply a camera's ISR overrides (dotted names allowed, e.g. ``overscan.fitType``) to ``config``.

    Call it before user overrides, as LSST applies obs-package config files first.
    """
    return apply_overrides(config, camera.stage_overrides("isr"))


def _as_array(calib: Any, what: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, Any]:
    """(image, mask, variance, metadata) of a calib given as Exposure or array."""
    if isinstance(calib, Exposure):
        var = calib.variance if calib.variance is not None and np.any(calib.variance[::64, ::64]) else None
        return calib.image, calib.mask, var, calib
    arr = np.asarray(calib)
    if arr.ndim != 2:
        raise TaskError(f"{what} must be a 2-D image, not shape {arr.shape}")
    return arr, None, None, None


def _set_key(header: fits.Header, key: str, value: Any, comment: str = "") -> None:
    """Set a header card; long (HIERARCH) keys get no comment, so that the card fits in 80 characters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header[key] = (value, comment) if len(key) <= 8 else value


class IsrTask(Task):
    """Instrument signature removal: raw ADU frame -> post-ISR exposure in electrons.

    Examples
    --------
    >>> task = IsrTask()                                                  # doctest: +SKIP
    >>> exp = task.run(raw, bias=bias, flat=flat, defects=defects).exposure  # doctest: +SKIP
    """

    ConfigClass = IsrTaskConfig
    _DefaultName = "isr"

    # ----------------------------------------------------------------------------------------------
    @timeMethod
    def runDataRef(self, sensorRef) -> Struct:
        """Read the raw and the calibs the config asks for through the butler, run, write postISRCCD.

        Parameters
        ----------
        sensorRef : `calexpress.butler.ButlerDataRef`
            Data reference of the raw (``.get(datasetType)``, ``.put(obj, datasetType)``,
            ``.datasetExists(datasetType)``).
        """
        cfg = self.config
        raw = sensorRef.get(cfg.datasetType)
        butler = getattr(sensorRef, "butler", None)
        camera = getattr(butler, "camera", None) if butler is not None else None

        def calib(name: str, required: bool):
            # A product that exists but cannot be read is an error, never silently skipped.
            if required or sensorRef.datasetExists(name):
                return sensorRef.get(name)  # CalibNotFoundError / FitsReadError name the product
            return None

        detector = raw.detector
        bias = calib(cfg.biasDataProductName, True) if cfg.doBias else None
        dark = calib(cfg.darkDataProductName, True) if cfg.doDark else None
        flat = calib(cfg.flatDataProductName, True) if cfg.doFlat else None
        # Defects are required unless the camera YAML lists static defects for this detector;
        # linearity and crosstalk fall back to the camera's own coefficients.
        static_defects = bool(getattr(detector, "defects", None))
        defects = calib("defects", not static_defects) if cfg.doDefect else None
        linearizer = calib("linearizer", False) if cfg.doLinearize else None
        crosstalk = calib("crosstalk", False) if cfg.doCrosstalk else None
        result = self.run(
            raw,
            bias=bias,
            dark=dark,
            flat=flat,
            defects=defects,
            linearizer=linearizer,
            crosstalk=crosstalk,
            camera=camera,
        )
        if cfg.doWrite:
            sensorRef.put(result.exposure, "postISRCCD")
        return result

    # ----------------------------------------------------------------------------------------------
    @timeMethod
    def run(
        self,
        ccdExposure: Exposure,
        *,
        bias=None,
        dark=None,
        flat=None,
        defects=None,
        linearizer=None,
        crosstalk=None,
        camera=None,
        detector=None,
    ) -> Struct:
        """Remove the instrument signature of one raw exposure (in memory).

        Parameters
        ----------
        ccdExposure : `calexpress.exposure.Exposure`
            Untrimmed raw in ADU (as `calexpress.camera.Camera.read_raw` returns it); an already assembled
            frame (detector shape) skips overscan and assembly.  Modified in place.
        bias, dark, flat : `Exposure` or `numpy.ndarray`, optional
            Assembled master calibrations: bias [ADU]; dark [ADU per second of its dark time, from its
            ``visit_info``/``DARKTIME``, else per second]; flat (normalised).  Required when the config's
            ``doBias``/``doDark``/``doFlat`` is set.
        defects : `calexpress.calibs.Defects`, optional
            Bad pixels; the detector's static ``defects`` from the camera YAML are added to them.
        linearizer : `calexpress.calibs.Linearizer`, optional
            Defaults to the amplifiers' linearity in the camera YAML.
        crosstalk : `calexpress.calibs.CrosstalkCalib`, optional
            Defaults to the detector's ``crosstalk`` in the camera YAML.
        camera : `calexpress.camera.Camera`, optional
            Used to find the detector from the header when the exposure has none.
        detector : `calexpress.camera.Detector`, optional
            Overrides ``ccdExposure.detector``.

        Returns
        -------
        result : `Struct`
            ``exposure``: the post-ISR `Exposure` (electrons; mask and variance set; ``photo_calib``).
        """
        cfg = self.config
        det = detector or ccdExposure.detector
        if det is None and camera is not None:
            det = camera.detector_from_header(ccdExposure.metadata)
        if det is None:
            raise TaskError("IsrTask needs a detector (camera geometry): pass camera= or detector=")
        md = ccdExposure.metadata.copy() if ccdExposure.metadata is not None else fits.Header()
        planes = dict(ccdExposure.mask_planes)
        tmp = Exposure(np.zeros((1, 1), np.float32), mask_planes=planes)
        for name in ("BAD", "SAT", "INTRP", "SUSPECT", "UNMASKEDNAN", "EDGE", "NO_DATA", "VIGNETTED"):
            tmp.add_mask_plane(name)
        planes = tmp.mask_planes
        bit = {name: 1 << b for name, b in planes.items()}
        sat_bit = bit.get(cfg.saturatedMaskName) or (1 << tmp.add_mask_plane(cfg.saturatedMaskName))
        susp_bit = bit.get(cfg.suspectMaskName) or (1 << tmp.add_mask_plane(cfg.suspectMaskName))
        planes = tmp.mask_planes

        raw = ccdExposure.image
        if raw.dtype != np.float32:
            if not cfg.doConvertIntToFloat and not np.issubdtype(raw.dtype, np.floating):
                raise TaskError("integer raw image and doConvertIntToFloat=False")
            raw = raw.astype(np.float32)
            ccdExposure.image = raw
        # a raw has the raw shape; when raw and assembled shapes coincide (no overscan), an exposure that
        # went through ISR already carries OVERSCAN/BUNIT and is treated as assembled
        is_raw = det.raw_shape is not None and raw.shape == tuple(det.raw_shape)
        if is_raw and raw.shape == det.bbox.shape:
            is_raw = "OVERSCAN" not in md and str(md.get("BUNIT", "")).strip().lower() != "electron"
        if not is_raw and raw.shape != det.bbox.shape:
            raise TaskError(
                f"image is {raw.shape[1]}x{raw.shape[0]}: neither the raw "
                f"({det.raw_shape[1]}x{det.raw_shape[0]}) nor the assembled "
                f"({det.bbox.width}x{det.bbox.height}) size of detector {det.name}"
            )
        amps = det.amplifiers
        gains = {
            a.name: (
                cfg.gain
                if math.isfinite(cfg.gain) and cfg.gain > 0
                else (a.gain if math.isfinite(a.gain) and a.gain > 0 else 1.0)
            )
            for a in amps
        }
        read_noise = {a.name: (cfg.readNoise if cfg.readNoise > 0 else a.read_noise) for a in amps}
        if cfg.doDefect and det.defects:  # the camera's static defects are always added
            defects = Defects(list(det.defects) + (list(defects.boxes) if defects is not None else []))
        if linearizer is None and cfg.doLinearize:
            linearizer = Linearizer.from_detector(det)
        if crosstalk is None and cfg.doCrosstalk:
            crosstalk = CrosstalkCalib.from_detector(det)
            if crosstalk is None:
                self.log.warning("doCrosstalk: no crosstalk coefficients for detector %s; skipped", det.name)

        mask = np.zeros(det.bbox.shape, dtype=np.int32)
        if is_raw:
            # -- saturation and suspect on the raw data pixels
            for amp in amps:
                data = raw[amp.raw_data_bbox.slices]
                msl = mask[amp.bbox.slices]
                level = cfg.saturation if math.isfinite(cfg.saturation) else amp.saturation
                if cfg.doSaturation and math.isfinite(level):
                    hit = amp.data_to_assembled(data >= np.float32(level))
                    np.bitwise_or(msl, np.int32(sat_bit), out=msl, where=hit)
                if cfg.doSuspect and math.isfinite(amp.suspect_level):
                    hit = amp.data_to_assembled(data >= np.float32(amp.suspect_level))
                    np.bitwise_or(msl, np.int32(susp_bit), out=msl, where=hit)
            # -- overscan
            if cfg.doOverscan:
                self._overscan(raw, det, md, read_noise, gains)
            # -- crosstalk in raw readout order
            if cfg.doCrosstalk and crosstalk is not None and cfg.doCrosstalkBeforeAssemble:
                boxes = [det[name].raw_data_bbox for name in crosstalk.amp_order]
                fn.crosstalk_correct(raw, boxes, crosstalk.coeffs)
            image = fn.assemble(raw, det) if cfg.doAssembleCcd else raw
            for key in ("DATASEC", "BIASSEC", "TRIMSEC", "GAIN"):
                md.remove(key, ignore_missing=True, remove_all=True)
        else:
            image = raw
        if cfg.doBias:
            if bias is None:
                raise TaskError("doBias is set but no bias was given")
            self._subtract(image, mask, bias, "bias", 1.0)
        if cfg.doLinearize and linearizer is not None:
            for amp in amps:
                linearizer.apply(image[amp.bbox.slices], amp.name)
        # -- variance in electrons, before dark (as LSST): gain * max(ADU, 0) + read_noise^2
        variance = np.empty_like(image)
        if cfg.doVariance:
            for amp in amps:
                isl, vsl = image[amp.bbox.slices], variance[amp.bbox.slices]
                np.maximum(isl, np.float32(0.0), out=vsl)
                vsl *= np.float32(gains[amp.name])
                vsl += np.float32(read_noise[amp.name] ** 2)
                self.metadata[f"ISR VARIANCE {amp.name} MEDIAN"] = float(np.median(vsl[::16, ::16]))
        else:
            variance.fill(1.0)
        if cfg.doCrosstalk and crosstalk is not None and not cfg.doCrosstalkBeforeAssemble:
            names = crosstalk.amp_order
            fn.crosstalk_correct(
                image, [det[n].bbox for n in names], crosstalk.coeffs, [det[n].flip_x for n in names]
            )
        if cfg.doDark:
            if dark is None:
                raise TaskError("doDark is set but no dark was given")
            exp_dt = ccdExposure.visit_info.dark_time if ccdExposure.visit_info is not None else float("nan")
            if not math.isfinite(exp_dt):
                exp_dt = float(md.get("DARKTIME", md.get("EXPTIME", float("nan"))))
            if not math.isfinite(exp_dt):
                raise TaskError("doDark: the exposure has no dark time")
            self._subtract(image, mask, dark, "dark", exp_dt / self._dark_time(dark))
        for amp in amps:
            image[amp.bbox.slices] *= np.float32(gains[amp.name])
        if cfg.doFlat:
            if flat is None:
                raise TaskError("doFlat is set but no flat was given")
            self._divide_flat(image, mask, variance, flat, bit["BAD"])
        # -- masks
        if cfg.doDefect and defects is not None:
            badb = np.int32(bit["BAD"])
            full = det.bbox.__class__.from_shape(image.shape)
            for box in defects.boxes:
                c = box.clip(full)
                if not c.is_empty():
                    mask[c.slices] |= badb
        if cfg.doVignette:
            for poly in det.vignette_polygons:
                sel = fn.polygon_mask(image.shape, poly)
                mask[sel] |= np.int32(bit["VIGNETTED"] | bit["NO_DATA"])
        if cfg.numEdgeSuspect > 0:
            n = cfg.numEdgeSuspect
            for sl in (np.s_[:n, :], np.s_[-n:, :], np.s_[:, :n], np.s_[:, -n:]):
                mask[sl] |= np.int32(susp_bit)
        if cfg.doNanMasking:
            nan = np.isnan(image)
            nnan = int(np.count_nonzero(nan))
            if nnan:
                mask[nan] |= np.int32(bit["UNMASKEDNAN"])
            self.metadata["NUMNANS"] = nnan
        if cfg.doWidenSaturationTrails and cfg.doSaturation:
            fn.widen_saturation_trails(mask, sat_bit)
        # -- interpolation
        if cfg.doInterpolate:
            names = [
                n
                for n in cfg.maskListToInterpolate
                if not (n == cfg.saturatedMaskName and not cfg.doSaturationInterpolation)
                and not (n == "UNMASKEDNAN" and not cfg.doNanInterpolation)
            ]
            if cfg.saturatedMaskName in names and cfg.growSaturationFootprintSize > 0:
                fn.grow_mask_cross(mask, sat_bit, cfg.growSaturationFootprintSize)
            interp_bits = 0
            for n in names:
                if n in bit:
                    interp_bits |= bit[n]
            if interp_bits:
                fallback = self._fallback(image, mask, interp_bits)
                nint = fn.interpolate_over_mask(
                    image, mask, interp_bits, bit["INTRP"], fallback, cfg.interpolationWidth
                )
                self.metadata["NUMINTERPOLATED"] = nint
                # interpolated pixels: variance from the neighbours' level
                sel = (mask & np.int32(interp_bits)) != 0
                if sel.any():
                    rn2 = float(np.median([read_noise[a.name] ** 2 for a in amps]))
                    variance[sel] = np.maximum(image[sel], 0.0) + rn2
        elif cfg.doSetBadRegions:
            badsel = (mask & np.int32(bit["BAD"])) != 0
            if badsel.any():
                image[badsel] = np.float32(np.median(image[~badsel][::7]))
        # -- result
        exposure = Exposure(
            image,
            mask,
            variance,
            mask_planes=planes,
            metadata=md,
            wcs=ccdExposure.wcs,
            visit_info=ccdExposure.visit_info,
            detector=det,
            filter=ccdExposure.filter,
        )
        if cfg.expectWcs and exposure.wcs is None:
            self.log.warning("the exposure has no WCS")
        _set_key(md, "BUNIT", "electron", "image unit after ISR")
        exposure.photo_calib = self._rough_photo_calib(exposure)
        if cfg.doMeasureBackground:
            good = (mask[::4, ::4] & np.int32(bit["BAD"] | sat_bit | bit["INTRP"] | bit["NO_DATA"])) == 0
            level, sigma, _ = clipped_stats(image[::4, ::4], ~good)
            _set_key(md, "SKYLEVEL", float(level), "clipped mean of the post-ISR image [e-]")
            _set_key(md, "SKYSIGMA", float(sigma), "clipped stdev of the post-ISR image [e-]")
        return Struct(exposure=exposure)

    # ----------------------------------------------------------------------------------------------
    def _overscan(self, raw: np.ndarray, det, md: fits.Header, read_noise: dict, gains: dict) -> None:
        cfg = self.config
        lead, trail = cfg.overscanNumLeadingColumnsToSkip, cfg.overscanNumTrailingColumnsToSkip
        for amp in det.amplifiers:
            box = amp.raw_serial_overscan_bbox
            data_box = amp.raw_data_bbox
            if box is None or box.is_empty():
                self.log.debug("amp %s has no serial overscan", amp.name)
                continue
            # "leading" = next to the data (in readout order the overscan follows the data)
            x0, x1 = box.x0, box.x1
            if box.x0 >= data_box.x1:  # overscan right of the data
                x0, x1 = x0 + lead, x1 - trail
            else:  # overscan (or prescan used as one) left of the data
                x0, x1 = x0 + trail, x1 - lead
            if x1 <= x0:
                raise TaskError(f"amp {amp.name}: skipping {lead}+{trail} columns leaves no overscan")
            y0, y1 = max(box.y0, data_box.y0), min(box.y1, data_box.y1)
            ov = raw[y0:y1, x0:x1]
            model, level, noise = fit_overscan(ov, cfg.overscan, cfg.overscanMaxDev)
            data = raw[data_box.slices]
            if y1 - y0 == data_box.height:
                data -= model[:, None]
            else:
                data -= np.float32(level)
            vector = cfg.overscan.fitType not in ("MEDIAN", "MEAN", "MEANCLIP")
            _set_key(md, f"ISR_OSCAN_LEVEL{amp.name}", level, f"overscan level of amp {amp.name} [ADU]")
            _set_key(
                md,
                f"ISR_OSCAN_SIGMA{amp.name}",
                float(np.std(model)) if vector else 0.0,
                f"stdev of the overscan model of amp {amp.name} [ADU]",
            )
            _set_key(md, f"ISR_OSCAN_NOISE{amp.name}", noise, f"overscan noise of amp {amp.name} [ADU]")
            self.metadata[f"ISR OSCAN {amp.name} MEDIAN"] = level
            self.metadata[f"ISR OSCAN {amp.name} STDEV"] = noise
            if cfg.doEmpiricalReadNoise and math.isfinite(noise):
                read_noise[amp.name] = noise * gains[amp.name]
            if cfg.doParallelOverscan and amp.raw_parallel_overscan_bbox is not None:
                pbox = amp.raw_parallel_overscan_bbox
                pov = raw[pbox.slices].copy()
                # serial level of the parallel-overscan rows, where the serial overscan reaches them
                rows = raw[
                    pbox.y0 : pbox.y1,
                    box.x0 + (lead if box.x0 >= data_box.x1 else trail) : box.x1
                    - (trail if box.x0 >= data_box.x1 else lead),
                ]
                pov -= np.median(rows, axis=1)[:, None] if rows.size else np.float32(level)
                cols = np.median(pov, axis=0).astype(np.float32)
                if cols.size == data_box.width:
                    data -= cols[None, :]
        _set_key(md, "OVERSCAN", "Overscan corrected", "")

    def _subtract(self, image: np.ndarray, mask: np.ndarray, calib, what: str, scale: float) -> None:
        arr, cmask, _, _ = _as_array(calib, what)
        if arr.shape != image.shape:
            raise TaskError(
                f"{what} is {arr.shape[1]}x{arr.shape[0]}, the exposure {image.shape[1]}x{image.shape[0]}"
            )
        if scale == 1.0:
            np.subtract(image, arr, out=image, casting="unsafe")
        else:
            image -= np.float32(scale) * arr.astype(np.float32, copy=False)
        if cmask is not None and cmask.any():
            mask |= cmask.astype(np.int32, copy=False)

    @staticmethod
    def _dark_time(dark) -> float:
        if isinstance(dark, Exposure):
            if (
                dark.visit_info is not None
                and math.isfinite(dark.visit_info.dark_time)
                and dark.visit_info.dark_time > 0
            ):
                return float(dark.visit_info.dark_time)
            for key in ("DARKTIME", "EXPTIME"):
                v = dark.metadata.get(key) if dark.metadata is not None else None
                if isinstance(v, (int, float)) and v > 0:
                    return float(v)
        return 1.0

    def _divide_flat(
        self, image: np.ndarray, mask: np.ndarray, variance: np.ndarray, flat, bad_bit: int
    ) -> None:
        cfg = self.config
        arr, cmask, fvar, _ = _as_array(flat, "flat")
        if arr.shape != image.shape:
            raise TaskError(
                f"flat is {arr.shape[1]}x{arr.shape[0]}, the exposure {image.shape[1]}x{image.shape[0]}"
            )
        arr = arr.astype(np.float32, copy=False)
        if cfg.flatScalingType == "USER":
            scale = cfg.flatUserScale
        elif cfg.flatScalingType == "MEAN":
            scale = float(np.nanmean(arr[::4, ::4]))
        else:
            scale = float(np.nanmedian(arr[::4, ::4]))
        bad = ~(arr > 0)
        if bad.any():
            arr = np.where(bad, np.float32(1.0), arr)
            mask[bad] |= np.int32(bad_bit)  # a flat <= 0 or NaN: no response
            image[bad] = np.nan
        if scale != 1.0:
            arr = arr / np.float32(scale)
        image /= arr
        variance /= arr
        variance /= arr
        if fvar is not None:
            variance += image * image * (fvar.astype(np.float32) / (arr * arr * np.float32(scale * scale)))
        if cmask is not None and cmask.any():
            mask |= cmask.astype(np.int32, copy=False)

    @staticmethod
    def _fallback(image: np.ndarray, mask: np.ndarray, bits: int) -> float:
        sub, msub = image[::8, ::8], mask[::8, ::8]
        mean, _, n = clipped_stats(sub, msub, bits)
        return float(mean) if n else 0.0

    def _rough_photo_calib(self, exposure: Exposure) -> PhotoCalib | None:
        cfg = self.config
        exptime = exposure.visit_info.exposure_time if exposure.visit_info is not None else float("nan")
        if not (math.isfinite(exptime) and exptime > 0):
            return None
        filt = exposure.filter
        if filt in cfg.fluxMag0T1:
            fm0 = cfg.fluxMag0T1[filt]
        else:
            self.log.debug("no fluxMag0T1 for filter %s: using defaultFluxMag0T1", filt)
            fm0 = cfg.defaultFluxMag0T1
        return PhotoCalib.from_zero_point(2.5 * math.log10(fm0 * exptime))
